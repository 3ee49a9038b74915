delete from metrics where run_id = $run_id and fold in (select distinct fold from new_metrics);

insert into metrics (run_id, fold, simulator, metric, value)
select $run_id, fold, simulator, metric, value from new_metrics;

-- the rows these scores were computed from (the rerun fast path compares it)
insert or replace into run_fingerprints (run_id, fingerprint, scored_at)
select $run_id, run_fingerprint($run_id), now();
