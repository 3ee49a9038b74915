-- doppel.open_run: the run's users and their state
select fold, user_id, status, n_pairs, n_failed, n_calls, retries, finished_at
from run_users
where run_id = $run_id
order by fold, user_id
