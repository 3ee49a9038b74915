select run_id, fold, user_id, version, stage, text, call_key
from profiles
where run_id = $run_id
