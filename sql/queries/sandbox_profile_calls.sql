-- what a sandbox's agent profiles cost (the set-up, and resumes that asked failed ones again): LLM calls
-- made and calls answered from the response cache
select
    count(*) filter (where not cached) as new_calls,
    count(*) filter (where cached) as cached_calls
from llm_calls
where run_id = $sandbox_id and prompt_name in ('profile_create', 'profile_repair')
