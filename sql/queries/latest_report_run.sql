-- the run `doppel report` shows by default: the latest that simulated users (an arena, ensemble or
-- RL run in the same file has its own section or command), else the latest of any kind
select run_id
from runs
order by coalesce(json_extract_string(config, '$.kind'), 'run') in ('arena', 'ensemble', 'rl'), started desc
limit 1
