-- doppel.open_run: the run's row (the given run, else the default of sql/staging/stg_runs_preferred.sql)
select run_id, dataset, folds, started, finished, status, config, code_version, prompt_hashes, model, base_url
from stg_runs_preferred
where $run_id is null or run_id = $run_id
order by preference
limit 1
