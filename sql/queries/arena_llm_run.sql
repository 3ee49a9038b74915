-- the latest finished `doppel run --target arena` that rated an arena run's lists (the arena's LLM judge)
select run_id
from runs
where json_extract_string(config, '$.sim.target') = 'arena'
  and json_extract_string(config, '$.sim.arena_run') = $arena_run
  and status = 'finished'
order by started desc
limit 1
