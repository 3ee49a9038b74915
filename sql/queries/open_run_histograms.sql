-- doppel.open_run: real vs simulated rating histograms of the run (the rating_histograms view)
select fold, source, rating, n, share
from rating_histograms
where run_id = $run_id
order by fold, source, rating
