delete from metrics where run_id = $run_id and fold in (select distinct fold from new_metrics);

insert into metrics (run_id, fold, simulator, metric, value)
select $run_id, fold, simulator, metric, value from new_metrics;
