-- per recommender: the real metric beside each judge's simulated one (the report's scatter); the LLM
-- judge rated a sample of users, so it is set against the real metric of those users (real@llm)
create or replace view arena_scatter as
with real as (
    select run_id, fold, protocol, recommender, metric, judge as real_judge, value as real_value
    from arena_metrics
    where judge in ('real', 'real@llm')
),
simulated as (
    select run_id, fold, protocol, recommender, judge, metric, value as simulated_value,
           case when judge = 'llm' then 'real@llm' else 'real' end as real_judge
    from arena_metrics
    where judge not in ('real', 'real@llm')
),
final as (
    select s.run_id, s.fold, s.protocol, s.recommender, s.metric, s.judge, r.real_value, s.simulated_value,
           s.simulated_value - r.real_value as difference
    from simulated s
    join real r using (run_id, fold, protocol, recommender, metric, real_judge)
)
select * from final
