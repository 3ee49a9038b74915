-- doppel.open_run: every profile version of the run's users
select fold, user_id, version, stage, text, call_key
from profiles
where run_id = $run_id
order by fold, user_id, version
