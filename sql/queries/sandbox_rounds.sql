select round, status, started, finished, wall_s, active_agents, new_calls, cached_calls, failed_actions, recommender
from sandbox_rounds where sandbox_id = $sandbox_id order by round
