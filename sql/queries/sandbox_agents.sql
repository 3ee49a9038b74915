select agent_id, user_id, demographics, profile, profile_source, profile_error, activity
from sandbox_agents where sandbox_id = $sandbox_id order by agent_id
