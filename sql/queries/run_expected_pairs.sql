-- the pairs a run requested of the users it has written (done or partial; a pending user has no rows
-- yet): each user's test items (or calibration-slice items) in time order, capped per user if configured
with run_cfg as (
    select dataset,
           try_cast(json_extract_string(config, '$.sim.max_test_items') as integer) as cap,
           coalesce(json_extract_string(config, '$.sim.target'), 'test') as target
    from runs where run_id = $run_id
),
slice_cfg as (
    select coalesce(try_cast(json_extract_string(config, '$.sim.slice_frac') as double), 0.2) as frac,
           coalesce(try_cast(json_extract_string(config, '$.sim.slice_seed') as integer), 0) as seed
    from runs where run_id = $run_id
),
rated as (
    select u.fold, u.user_id, p.item_id,
           row_number() over (partition by u.fold, u.user_id order by p.ts, p.item_id) as position
    from run_users u
    join fold_parts((select dataset from run_cfg), null, (select frac from slice_cfg), (select seed from slice_cfg)) p
      on p.fold = u.fold and p.user_id = u.user_id
    join run_cfg c on p.part = c.target
    where u.run_id = $run_id and u.status <> 'pending'
)
select fold, user_id, item_id
from rated, run_cfg
where run_cfg.cap is null or position <= run_cfg.cap
order by fold, user_id, item_id
