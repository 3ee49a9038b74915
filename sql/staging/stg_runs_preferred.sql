-- every run with its place in the order `doppel report` and `doppel.open_run` pick a default from:
-- runs that simulated users first (an arena, ensemble or RL run has its own section or command),
-- then the latest started
create or replace view stg_runs_preferred as
with final as (
    select *,
           row_number() over (
               order by coalesce(json_extract_string(config, '$.kind'), 'run') in ('arena', 'ensemble', 'rl'),
                        started desc
           ) as preference
    from runs
)
select * from final
