update runs set status = $status, finished = current_timestamp where run_id = $run_id;
