-- a run's simulated_ratings rows, plus two columns the output contract checks rating_probs with
select run_id, fold, user_id, item_id, rating, status, reason, batch, attempts, call_key, rating_probs,
       rating_probs_source, rating_probs_draws,
       len(rating_probs) as rating_probs_n, list_sum(rating_probs) as rating_probs_sum
from simulated_ratings
where run_id = $run_id
