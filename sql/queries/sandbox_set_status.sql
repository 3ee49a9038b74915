update sandbox_runs set status = $status, updated = current_timestamp where sandbox_id = $sandbox_id
