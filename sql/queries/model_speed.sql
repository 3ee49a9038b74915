-- seconds per call measured in this database's own runs (answered calls only, cache hits left out), per
-- model: the median rating call (doppel models) and the mean of every call (the dry run's wall time)
select
    model,
    count(*) filter (where prompt_name = 'rating') as calls,
    median(latency_s) filter (where prompt_name = 'rating') as median_s,
    count(*) as all_calls,
    avg(latency_s) as mean_s
from llm_calls
where status = 'ok' and not cached and latency_s is not null
group by model
