-- a finished `doppel rl` run: its fold and config (the arena enters its saved agents)
select run_id, dataset, folds, config
from runs
where run_id = $run_id and json_extract_string(config, '$.kind') = 'rl' and status = 'finished'
