-- the pairs a run requested of the users it has written (done or partial; a pending user has no rows
-- yet): each user's test items (or calibration-slice items, or an arena run's listed items) in the
-- order user_candidates.sql gives them, capped per user if configured
with run_cfg as (
    select dataset,
           try_cast(json_extract_string(config, '$.sim.max_test_items') as integer) as cap,
           coalesce(json_extract_string(config, '$.sim.target'), 'test') as target,
           json_extract_string(config, '$.sim.arena_run') as arena_run
    from runs where run_id = $run_id
),
slice_cfg as (
    select coalesce(try_cast(json_extract_string(config, '$.sim.slice_frac') as double), 0.2) as frac,
           coalesce(try_cast(json_extract_string(config, '$.sim.slice_seed') as integer), 0) as seed
    from runs where run_id = $run_id
),
users as (
    select fold, user_id from run_users where run_id = $run_id and status <> 'pending'
),
parts as (
    select * from fold_parts((select dataset from run_cfg), null, (select frac from slice_cfg), (select seed from slice_cfg))
),
test_or_slice as (
    select u.fold, u.user_id, p.item_id, p.ts
    from users u
    join parts p on p.fold = u.fold and p.user_id = u.user_id
    join run_cfg c on p.part = c.target
),
arena_rated as (
    select a.fold, a.user_id, a.item_id, t.ts
    from (
        select distinct l.fold, l.user_id, l.item_id
        from arena_lists l
        join users u on u.fold = l.fold and u.user_id = l.user_id
        join run_cfg c on c.target = 'arena' and l.run_id = c.arena_run
    ) a
    left join parts t on t.part = 'test' and t.fold = a.fold and t.user_id = a.user_id and t.item_id = a.item_id
),
rated as (
    select fold, user_id, item_id,
           row_number() over (partition by fold, user_id order by ts nulls last, item_id) as position
    from (select * from test_or_slice union all select * from arena_rated)
)
select fold, user_id, item_id
from rated, run_cfg
where run_cfg.cap is null or position <= run_cfg.cap
order by fold, user_id, item_id
