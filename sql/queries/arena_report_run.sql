-- the arena run the report shows: the given id (any status), else the latest finished one
with arena_runs as (
    select run_id, dataset, folds, status, started, finished
    from runs
    where json_extract_string(config, '$.kind') = 'arena'
),
final as (
    select *
    from arena_runs
    where (cast($run_id as varchar) is null and status = 'finished')
       or run_id = cast($run_id as varchar)
)
select * from final order by started desc limit 1
