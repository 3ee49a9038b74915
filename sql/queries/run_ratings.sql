-- a run's simulated_ratings rows (every column, in table order), plus two columns the output contract
-- checks rating_probs with (expectations/simulated_ratings.json: meta.extra_columns)
select *, len(rating_probs) as rating_probs_n, list_sum(rating_probs) as rating_probs_sum
from simulated_ratings
where run_id = $run_id
order by fold, user_id, item_id
