-- is a run finished with nothing left to do, validated and scored? (the rerun fast path)
select r.dataset,
       r.status,
       (select count(*) from run_users u where u.run_id = $run_id and u.status <> 'done') as users_left,
       (select count(*) from metrics m where m.run_id = $run_id and m.simulator = 'llm') as llm_metrics,
       (select count(*) from metrics m where m.run_id = $run_id and m.simulator like 'baseline:%') as baseline_metrics,
       (select count(*) from (select suite, arg_max(success, checked_at) as ok
                              from validation_results where run_id = $run_id group by suite) v
        where not v.ok) as failing_suites,
       (select count(*) from validation_results where run_id = $run_id) as checks,
       coalesce((select f.fingerprint = run_fingerprint($run_id) from run_fingerprints f
                 where f.run_id = $run_id), false) as rows_unchanged
from runs r
where r.run_id = $run_id
