-- a finished `doppel ensemble` run: the given id, else the latest (of datasets matching $dataset, if given)
with ensemble_runs as (
    select run_id, dataset, folds, status, started, config, model  -- model: the keywords' key
    from runs
    where json_extract_string(config, '$.kind') = 'ensemble'
      and status = 'finished'
),
final as (
    select *
    from ensemble_runs
    where (cast($run_id as varchar) is null or run_id = cast($run_id as varchar))
      and (cast($dataset as varchar) is null or dataset like cast($dataset as varchar))  -- a LIKE pattern
)
select run_id, dataset, folds, status, config, model from final order by started desc limit 1
