-- per (run, fold, source): the rating distribution of the real and the simulated ratings of the same
-- pairs (those that got a rating), one row per rating 1..5 (zero counts included); share is a
-- fraction 0..1 of the source's pairs.
create or replace view rating_histograms as
with pairs as (
    select run_id, fold, real, simulated
    from stg_simulated_pairs
    where status = 'ok'
),
long as (
    select run_id, fold, 'real' as source, real as rating from pairs
    union all
    select run_id, fold, 'simulated' as source, simulated as rating from pairs
),
grid as (
    select f.run_id, f.fold, src.source, scale.rating
    from (select distinct run_id, fold from pairs) f
    cross join (values ('real'), ('simulated')) src(source)
    cross join range(1, 6) scale(rating)
),
counts as (
    select run_id, fold, source, rating, count(*) as n
    from long
    group by run_id, fold, source, rating
),
final as (
    select g.run_id, g.fold, g.source, g.rating::integer as rating, coalesce(c.n, 0) as n,
           coalesce(c.n, 0) / sum(coalesce(c.n, 0)) over (partition by g.run_id, g.fold, g.source) as share
    from grid g
    left join counts c using (run_id, fold, source, rating)
)
select * from final
