-- a run's stored scores (long format)
select fold, simulator, metric, value from metrics where run_id = $run_id order by fold, simulator, metric
