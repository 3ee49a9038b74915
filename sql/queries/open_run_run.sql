-- doppel.open_run: the run's row (the given run, else the latest that simulated users, else the latest)
select run_id, dataset, folds, started, finished, status, config, code_version, prompt_hashes, model, base_url
from runs
where $run_id is null or run_id = $run_id
order by coalesce(json_extract_string(config, '$.kind'), 'run') in ('arena', 'ensemble', 'rl'), started desc
limit 1
