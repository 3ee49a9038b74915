-- doppel models: seconds per rating call measured in this database's own runs (answered calls only,
-- cache hits left out), per model
select
    model,
    count(*) as calls,
    median(latency_s) as median_s
from llm_calls
where prompt_name = 'rating' and status = 'ok' and not cached and latency_s is not null
group by model
