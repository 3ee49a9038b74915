-- the pairs a run requested of the users it has written (done or partial; a pending user has no rows
-- yet): each user's test items in time order, capped per user if configured
with run_cfg as (
    select dataset, try_cast(json_extract_string(config, '$.sim.max_test_items') as integer) as cap
    from runs where run_id = $run_id
),
test as (
    select u.fold, u.user_id, s.item_id,
           row_number() over (partition by u.fold, u.user_id order by r.ts, s.item_id) as position
    from run_users u
    join run_cfg c on true
    join splits s on s.dataset = c.dataset and s.fold = u.fold and s.user_id = u.user_id and s.split = 'test'
    join ratings r on r.dataset = c.dataset and r.user_id = s.user_id and r.item_id = s.item_id
    where u.run_id = $run_id and u.status <> 'pending'
)
select fold, user_id, item_id
from test, run_cfg
where run_cfg.cap is null or position <= run_cfg.cap
