-- new_metrics: fold, simulator, metric, value; replaces only these simulators' rows of the run
delete from metrics m using new_metrics n
where m.run_id = $run_id and m.fold = n.fold and m.simulator = n.simulator;

insert into metrics (run_id, fold, simulator, metric, value)
select $run_id, fold, simulator, metric, value from new_metrics;
