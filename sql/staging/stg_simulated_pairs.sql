-- one row per simulated (run, fold, user, item) pair with the real rating it is compared with: the
-- simulated_ratings x runs x ratings join every rating view starts from. `simulated` is null for a
-- failed pair (status <> 'ok'); `real` is the dataset's rating of the same (user, item).
create or replace view stg_simulated_pairs as
with simulated as (
    select
        run_id, fold, user_id, item_id,
        rating as simulated,
        status, reason, batch, attempts, call_key,
        rating_probs, rating_probs_source, rating_probs_draws
    from simulated_ratings
),
run_datasets as (
    select run_id, dataset from runs
),
final as (
    select s.*, d.dataset, r.rating as real
    from simulated s
    join run_datasets d using (run_id)
    join ratings r on r.dataset = d.dataset and r.user_id = s.user_id and r.item_id = s.item_id
)
select * from final
