update sandbox_rounds set status = 'finished', finished = current_timestamp, wall_s = $wall_s,
       active_agents = $active_agents, new_calls = $new_calls, cached_calls = $cached_calls,
       failed_actions = $failed_actions
where sandbox_id = $sandbox_id and round = $round;
update sandbox_runs set rounds_done = $round, updated = current_timestamp where sandbox_id = $sandbox_id;
