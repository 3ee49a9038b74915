-- the LLM calls of finished work (new_calls: fold, user_id, the llm_calls columns, replayed) under owner
-- $run_id (a run, a sandbox or an ensemble id), run in the same transaction as the rows they produced.
-- A replayed call (this owner's own, made by an invocation interrupted before it recorded it, read back
-- from the cache now) is stored as the call it was, once: unless the owner already recorded it, or an
-- earlier row of these records it. paid_calls stays for the rest of the transaction (who counts calls).
create or replace temp table paid_calls as
select * replace (
    cached and not (replayed and row_number() over (partition by call_key order by cached, fold, user_id) = 1
                    and not exists (select 1 from llm_calls l
                                    where l.run_id = $run_id and l.call_key = c.call_key and not l.cached)) as cached
)
from new_calls c;

insert into llm_calls (call_key, run_id, fold, user_id, prompt_name, prompt_hash, model, status, cached,
                       attempts, prompt_tokens, completion_tokens, latency_s, cached_prompt_tokens, error, response)
select call_key, $run_id, fold, user_id, prompt_name, prompt_hash, model, status, cached,
       attempts, prompt_tokens, completion_tokens, latency_s, cached_prompt_tokens, error, response
from paid_calls;
