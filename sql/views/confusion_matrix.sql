-- per (run, fold): how often real rating r was simulated as s; only the cells that occur (sparse),
-- over the pairs that got a rating. Pivot it with
--   pivot (from confusion_matrix where run_id = '...') on simulated using sum(n) group by real
create or replace view confusion_matrix as
with pairs as (
    select run_id, fold, real, simulated
    from stg_simulated_pairs
    where status = 'ok'
),
final as (
    select run_id, fold, real, simulated, count(*) as n
    from pairs
    group by run_id, fold, real, simulated
)
select * from final
