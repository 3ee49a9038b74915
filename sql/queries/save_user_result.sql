-- one finished user, written in one transaction; new_profiles, new_ratings and new_calls are
-- the worker's rows registered as DataFrames. A rerun replaces what it recomputed.
delete from profiles where run_id = $run_id and fold = $fold and user_id = $user_id;

insert into profiles (run_id, fold, user_id, version, stage, text, call_key)
select $run_id, $fold, $user_id, version, stage, text, call_key from new_profiles;

delete from simulated_ratings
where run_id = $run_id and fold = $fold and user_id = $user_id
  and item_id in (select item_id from new_ratings);

insert into simulated_ratings (run_id, fold, user_id, item_id, rating, status, reason, batch, attempts, call_key)
select $run_id, $fold, $user_id, item_id, rating, status, reason, batch, attempts, call_key from new_ratings;

insert into llm_calls (call_key, run_id, fold, user_id, prompt_name, prompt_hash, model, status, cached,
                       attempts, prompt_tokens, completion_tokens, latency_s, error, response)
select call_key, $run_id, $fold, $user_id, prompt_name, prompt_hash, model, status, cached,
       attempts, prompt_tokens, completion_tokens, latency_s, error, response
from new_calls;

update run_users set
    status = case when (select count(*) from simulated_ratings
                        where run_id = $run_id and fold = $fold and user_id = $user_id and status = 'failed') > 0
                  then 'partial' else 'done' end,
    n_failed = (select count(*) from simulated_ratings
                where run_id = $run_id and fold = $fold and user_id = $user_id and status = 'failed'),
    n_calls = n_calls + (select count(*) from new_calls where not cached),
    retries = $retries,
    finished_at = current_timestamp
where run_id = $run_id and fold = $fold and user_id = $user_id;
