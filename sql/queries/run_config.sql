-- the settings a run was started with (RunSettings as JSON)
select config from runs where run_id = $run_id
