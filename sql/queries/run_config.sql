-- the settings a run was started with (RunSettings as JSON) and the model id that answered it
select config, model from runs where run_id = $run_id
