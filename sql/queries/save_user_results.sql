-- finished users, written in one transaction; new_users (fold, user_id, retries), new_profiles,
-- new_ratings and new_calls (each with fold, user_id) are the workers' rows as DataFrames; runs after
-- record_calls.sql (its paid_calls counts each user's calls). A rerun replaces what it recomputed.
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
