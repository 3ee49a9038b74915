-- one row per run: status, how far it got (users done / partial / pending, pairs rated / failed)
-- and how many rated pairs came after a user's first rating batch
create or replace view run_overview as
with users as (
    select
        run_id,
        count(*) as users,
        count(*) filter (where status = 'done') as users_done,
        count(*) filter (where status = 'partial') as users_partial,
        count(*) filter (where status = 'pending') as users_pending,
        coalesce(sum(n_pairs), 0)::bigint as pairs_requested
    from run_users
    group by run_id
),
pairs as (
    select
        run_id,
        count(*) as pairs,
        count(*) filter (where status = 'ok') as pairs_rated,
        count(*) filter (where status <> 'ok') as pairs_failed,
        -- batch >= 1: rated after at least one profile update when sim.update_profile is on
        count(*) filter (where status = 'ok' and batch > 0) as pairs_later_batches
    from simulated_ratings
    group by run_id
),
final as (
    select
        r.run_id, r.dataset, r.folds, r.model, r.status, r.started, r.finished,
        date_diff('millisecond', r.started, r.finished) / 1000.0 as wall_s,  -- null while running
        coalesce(u.users, 0) as users,
        coalesce(u.users_done, 0) as users_done,
        coalesce(u.users_partial, 0) as users_partial,
        coalesce(u.users_pending, 0) as users_pending,
        coalesce(u.pairs_requested, 0) as pairs_requested,
        coalesce(p.pairs, 0) as pairs,
        coalesce(p.pairs_rated, 0) as pairs_rated,
        coalesce(p.pairs_failed, 0) as pairs_failed,
        coalesce(p.pairs_later_batches, 0) as pairs_later_batches
    from runs r
    left join users u using (run_id)
    left join pairs p using (run_id)
)
select * from final
