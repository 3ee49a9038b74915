-- what is left of a run: users not done, with the items that still need a rating
with users_left as (
    select fold, user_id, status, retries
    from run_users
    where run_id = $run_id and status <> 'done'
),
failed as (
    select fold, user_id, list(item_id order by item_id) as failed_items
    from simulated_ratings
    where run_id = $run_id and status = 'failed'
    group by fold, user_id
)
select u.fold, u.user_id, u.status, u.retries, f.failed_items
from users_left u
left join failed f using (fold, user_id)
order by u.fold, u.user_id
