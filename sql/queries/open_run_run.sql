-- doppel.open_run: the run's row (the given run, else the latest one started)
select run_id, dataset, folds, started, finished, status, config, code_version, prompt_hashes, model, base_url
from runs
where $run_id is null or run_id = $run_id
order by started desc
limit 1
