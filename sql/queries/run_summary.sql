-- headline numbers of a run (for the CLI and notes)
select
    (select count(*) from run_users where run_id = $run_id) as users,
    (select count(*) from run_users where run_id = $run_id and status = 'done') as users_done,
    (select count(*) from simulated_ratings where run_id = $run_id) as pairs,
    (select count(*) from simulated_ratings where run_id = $run_id and status = 'failed') as failed_pairs,
    (select count(*) from llm_calls where run_id = $run_id and not cached) as calls,
    (select count(*) from llm_calls where run_id = $run_id and cached) as cached_calls,
    (select coalesce(sum(prompt_tokens), 0) from llm_calls where run_id = $run_id and not cached) as prompt_tokens,
    (select coalesce(sum(completion_tokens), 0) from llm_calls where run_id = $run_id and not cached) as completion_tokens,
    -- the gate's latest verdict per contract: "simulated_ratings: passed, 936 rows; profiles: passed, 128 rows"
    (select string_agg(suite || ': ' || case when success then 'passed' else 'FAILED' end || ', ' || n_rows || ' rows', '; '
                       order by suite desc)
     from (select * from validation_results where run_id = $run_id
           qualify row_number() over (partition by suite order by checked_at desc) = 1)) as gate
