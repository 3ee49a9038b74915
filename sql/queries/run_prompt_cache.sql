-- a run's calls, whether answered by the server or replayed from the response cache (a study's
-- variants share a cache: a variant's cost counts every call its prompts needed), and the
-- server-answered ones' prefix-cache reuse, latency and repair re-asks
select count(*)                                                         as calls,
       count(*) filter (where not cached)                               as server_calls,
       coalesce(sum(prompt_tokens), 0)                                  as prompt_tokens,
       coalesce(sum(prompt_tokens) filter (where not cached), 0)        as server_prompt_tokens,
       coalesce(sum(cached_prompt_tokens) filter (where not cached), 0) as prefix_cached_tokens,
       avg(latency_s) filter (where not cached)                         as s_per_call,
       count(*) filter (where prompt_name = 'repair')                   as repairs,
       (select count(*) filter (where status = 'ok') from simulated_ratings s where s.run_id = $run_id) as rated,
       (select count(*) filter (where status <> 'ok') from simulated_ratings s where s.run_id = $run_id) as failed
from llm_calls
where run_id = $run_id
