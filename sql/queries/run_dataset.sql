select dataset from runs where run_id = $run_id
