-- doppel.open_run: the gate's verdicts, latest check first
select suite, success, n_rows, failures, checked_at
from validation_results
where run_id = $run_id
order by checked_at desc, suite
