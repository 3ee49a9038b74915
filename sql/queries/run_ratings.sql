select run_id, fold, user_id, item_id, rating, status, reason, batch, attempts, call_key
from simulated_ratings
where run_id = $run_id
