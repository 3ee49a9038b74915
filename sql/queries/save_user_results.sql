-- finished users, written in one transaction; new_users (fold, user_id, retries), new_profiles,
-- new_ratings and new_calls (each with fold, user_id) are the workers' rows as DataFrames.
-- A rerun replaces what it recomputed.
delete from profiles p using new_users u
where p.run_id = $run_id and p.fold = u.fold and p.user_id = u.user_id;

insert into profiles (run_id, fold, user_id, version, stage, text, call_key)
select $run_id, fold, user_id, version, stage, text, call_key from new_profiles;

delete from simulated_ratings s using new_ratings n
where s.run_id = $run_id and s.fold = n.fold and s.user_id = n.user_id and s.item_id = n.item_id;

insert into simulated_ratings (run_id, fold, user_id, item_id, rating, status, reason, batch, attempts, call_key,
                               rating_probs, rating_probs_source, rating_probs_draws)
select $run_id, fold, user_id, item_id, rating, status, reason, batch, attempts, call_key,
       rating_probs::double[], rating_probs_source, rating_probs_draws from new_ratings;

-- a replayed call (this run's own, made by an invocation interrupted before it recorded it, read back from
-- the cache now) is stored as the call it was, once: unless the run already recorded it, or an earlier row
-- of these records it
create or replace temp table paid_calls as
select * replace (
    cached and not (replayed and row_number() over (partition by call_key order by cached, fold, user_id) = 1
                    and not exists (select 1 from llm_calls l
                                    where l.run_id = $run_id and l.call_key = c.call_key and not l.cached)) as cached
)
from new_calls c;

insert into llm_calls (call_key, run_id, fold, user_id, prompt_name, prompt_hash, model, status, cached,
                       attempts, prompt_tokens, completion_tokens, latency_s, cached_prompt_tokens, error, response)
select call_key, $run_id, fold, user_id, prompt_name, prompt_hash, model, status, cached,
       attempts, prompt_tokens, completion_tokens, latency_s, cached_prompt_tokens, error, response
from paid_calls;

update run_users r set
    status = case when f.n_failed > 0 then 'partial' else 'done' end,
    n_failed = f.n_failed,
    n_calls = r.n_calls + f.n_new_calls,
    retries = f.retries,
    finished_at = current_timestamp
from (
    select u.fold, u.user_id, u.retries,
           (select count(*) from simulated_ratings s
            where s.run_id = $run_id and s.fold = u.fold and s.user_id = u.user_id and s.status = 'failed') as n_failed,
           (select count(*) from paid_calls c where c.fold = u.fold and c.user_id = u.user_id and not c.cached) as n_new_calls
    from new_users u
) f
where r.run_id = $run_id and r.fold = f.fold and r.user_id = f.user_id;

drop table paid_calls;
