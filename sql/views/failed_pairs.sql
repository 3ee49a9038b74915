-- every requested pair that got no rating, with the item title and why (a rerun retries them)
create or replace view failed_pairs as
with failed as (
    select run_id, fold, user_id, item_id, reason, attempts, batch, dataset
    from stg_simulated_pairs
    where status <> 'ok'
),
final as (
    select f.run_id, f.fold, f.user_id, f.item_id, i.title, f.reason, f.attempts, f.batch
    from failed f
    left join items i on i.dataset = f.dataset and i.item_id = f.item_id
)
select * from final
