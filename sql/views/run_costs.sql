-- per run: LLM calls made (cached answers cost nothing and are counted apart), tokens, time, money.
-- Prices come from runs.config (llm.price_prompt_per_mtok / price_completion_per_mtok, USD per
-- million tokens); tokens and latency count only calls that went over HTTP (not cached).
create or replace view run_costs as
with prices as (
    select
        run_id,
        coalesce(try_cast(json_extract_string(config, '$.llm.price_prompt_per_mtok') as double), 0) as price_prompt_per_mtok,
        coalesce(try_cast(json_extract_string(config, '$.llm.price_completion_per_mtok') as double), 0) as price_completion_per_mtok
    from runs
),
calls as (
    select
        run_id,
        count(*) filter (where not cached) as calls,
        count(*) filter (where cached) as cached_calls,
        count(*) filter (where not cached and status <> 'ok') as failed_calls,
        coalesce(sum(attempts) filter (where not cached), 0)::bigint as http_attempts,
        coalesce(sum(prompt_tokens) filter (where not cached), 0)::bigint as prompt_tokens,
        coalesce(sum(completion_tokens) filter (where not cached), 0)::bigint as completion_tokens,
        coalesce(sum(latency_s) filter (where not cached), 0) as latency_s
    from llm_calls
    group by run_id
),
rated as (
    select run_id, count(*) filter (where status = 'ok') as ratings
    from simulated_ratings
    group by run_id
),
final as (
    select
        p.run_id,
        coalesce(c.calls, 0) as calls,
        coalesce(c.cached_calls, 0) as cached_calls,
        coalesce(c.failed_calls, 0) as failed_calls,
        coalesce(c.http_attempts, 0) as http_attempts,
        coalesce(c.prompt_tokens, 0) as prompt_tokens,
        coalesce(c.completion_tokens, 0) as completion_tokens,
        coalesce(c.latency_s, 0) as latency_s,  -- summed over calls: concurrent calls overlap in wall time
        -- tokens x USD per million tokens -> USD
        (coalesce(c.prompt_tokens, 0) * p.price_prompt_per_mtok
         + coalesce(c.completion_tokens, 0) * p.price_completion_per_mtok) / 1e6 as cost_usd,
        coalesce(r.ratings, 0) as ratings,
        (coalesce(c.prompt_tokens, 0) + coalesce(c.completion_tokens, 0)) / nullif(r.ratings, 0) as tokens_per_rating,
        p.price_prompt_per_mtok,
        p.price_completion_per_mtok
    from prices p
    left join calls c using (run_id)
    left join rated r using (run_id)
)
select * from final
