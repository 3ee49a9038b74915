-- doppel.open_run: one row per requested pair, the simulated rating beside the real one
with simulated as (
    select * from simulated_ratings where run_id = $run_id
),
real as (
    select r.user_id, r.item_id, r.rating
    from ratings r
    join runs on runs.dataset = r.dataset and runs.run_id = $run_id
),
final as (
    select s.fold, s.user_id, s.item_id, s.rating, real.rating as real_rating, s.status, s.reason, s.batch,
           s.attempts, s.rating_probs, s.rating_probs_source, s.rating_probs_draws, s.call_key
    from simulated s
    left join real using (user_id, item_id)
)
select * from final order by fold, user_id, batch, item_id
