-- a run's dataset and what it rated (test items, or the calibration slice), from its config
select dataset,
       coalesce(json_extract_string(config, '$.sim.target'), 'test') as target,
       coalesce(try_cast(json_extract_string(config, '$.sim.slice_frac') as double), 0.2) as slice_frac,
       coalesce(try_cast(json_extract_string(config, '$.sim.slice_seed') as integer), 0) as slice_seed
from runs where run_id = $run_id
