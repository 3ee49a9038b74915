-- doppel.open_run: the run's LLM calls (the audit log), oldest first
select call_key, fold, user_id, prompt_name, prompt_hash, model, status, cached, attempts, prompt_tokens,
       completion_tokens, cached_prompt_tokens, latency_s, error, response, created_at
from llm_calls
where run_id = $run_id
order by created_at, call_key
