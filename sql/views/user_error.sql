-- per (run, fold, user): how far the simulated ratings are from the real ones, and how active the user is.
-- Error columns use the pairs that got a rating (status ok); failed pairs are counted in n_failed.
-- exact_pct is in percent (0..100), like the `exact` metric; n_train is the user's train-split ratings.
create or replace view user_error as
with pairs as (
    select run_id, fold, user_id, status, simulated, real, dataset
    from stg_simulated_pairs
),
per_user as (
    select
        run_id, fold, user_id, any_value(dataset) as dataset,
        count(*) filter (where status = 'ok') as n,
        count(*) filter (where status <> 'ok') as n_failed,
        sqrt(avg((simulated - real) ^ 2) filter (where status = 'ok')) as rmse,
        avg(abs(simulated - real)) filter (where status = 'ok') as mae,
        100.0 * avg((simulated = real)::integer) filter (where status = 'ok') as exact_pct,
        avg(real) filter (where status = 'ok') as mean_real,
        avg(simulated) filter (where status = 'ok') as mean_simulated
    from pairs
    group by run_id, fold, user_id
),
activity as (
    select dataset, fold, user_id, count(*) as n_train
    from splits
    where split = 'train'
    group by dataset, fold, user_id
),
final as (
    select
        p.run_id, p.fold, p.user_id, p.n, p.n_failed, p.rmse, p.mae, p.exact_pct,
        p.mean_real, p.mean_simulated, coalesce(a.n_train, 0) as n_train
    from per_user p
    left join activity a on a.dataset = p.dataset and a.fold = p.fold and a.user_id = p.user_id
)
select * from final
