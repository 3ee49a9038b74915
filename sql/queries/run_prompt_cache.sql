-- a run's calls, whether answered by the server or replayed from the response cache (a study's
-- variants share a cache: a variant's cost counts every call its prompts needed). The server's own
-- figures for each call (latency, prefix-cache reuse) come from the run that first asked it.
with mine as (
    select call_key, cached, prompt_name, prompt_tokens from llm_calls where run_id = $run_id
), answered as (
    select call_key, avg(latency_s) as latency_s, max(cached_prompt_tokens) as prefix_cached_tokens,
           max(prompt_tokens) as prompt_tokens
    from llm_calls
    where not cached and call_key in (select call_key from mine)
    group by call_key
)
select count(*)                                          as calls,
       count(*) filter (where not m.cached)              as server_calls,
       coalesce(sum(m.prompt_tokens), 0)                 as prompt_tokens,
       coalesce(sum(a.prompt_tokens), 0)                 as server_prompt_tokens,
       coalesce(sum(a.prefix_cached_tokens), 0)          as prefix_cached_tokens,
       avg(a.latency_s)                                  as s_per_call,
       count(*) filter (where m.prompt_name = 'repair')  as repairs,
       (select count(*) filter (where status = 'ok') from simulated_ratings s where s.run_id = $run_id) as rated,
       (select count(*) filter (where status <> 'ok') from simulated_ratings s where s.run_id = $run_id) as failed
from mine m
left join answered a using (call_key)
