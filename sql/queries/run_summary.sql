-- headline numbers of a run (for the CLI and notes)
select
    (select count(*) from run_users where run_id = $run_id) as users,
    (select count(*) from run_users where run_id = $run_id and status = 'done') as users_done,
    (select count(*) from simulated_ratings where run_id = $run_id) as pairs,
    (select count(*) from simulated_ratings where run_id = $run_id and status = 'failed') as failed_pairs,
    (select count(*) from llm_calls where run_id = $run_id and not cached) as calls,
    (select count(*) from llm_calls where run_id = $run_id and cached) as cached_calls,
    (select coalesce(sum(prompt_tokens), 0) from llm_calls where run_id = $run_id and not cached) as prompt_tokens,
    (select coalesce(sum(completion_tokens), 0) from llm_calls where run_id = $run_id and not cached) as completion_tokens
