-- per recommender: the real metric beside each judge's simulated one (the report's scatter)
create or replace view arena_scatter as
with real as (
    select run_id, fold, protocol, recommender, metric, value as real_value
    from arena_metrics
    where judge = 'real'
),
simulated as (
    select run_id, fold, protocol, recommender, judge, metric, value as simulated_value
    from arena_metrics
    where judge <> 'real'
),
final as (
    select s.run_id, s.fold, s.protocol, s.recommender, s.metric, s.judge, r.real_value, s.simulated_value,
           s.simulated_value - r.real_value as difference
    from simulated s
    join real r using (run_id, fold, protocol, recommender, metric)
)
select * from final
