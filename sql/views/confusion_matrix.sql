-- per (run, fold): how often real rating r was simulated as s; only the cells that occur (sparse),
-- over the pairs that got a rating. Pivot it with
--   pivot (from confusion_matrix where run_id = '...') on simulated using sum(n) group by real
create or replace view confusion_matrix as
with pairs as (
    select s.run_id, s.fold, r.rating as real, s.rating as simulated
    from simulated_ratings s
    join runs using (run_id)
    join ratings r on r.dataset = runs.dataset and r.user_id = s.user_id and r.item_id = s.item_id
    where s.status = 'ok'
),
final as (
    select run_id, fold, real, simulated, count(*) as n
    from pairs
    group by run_id, fold, real, simulated
)
select * from final
