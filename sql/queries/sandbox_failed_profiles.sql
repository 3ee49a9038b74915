-- the agents whose profile failed (a resume asks them again): what the profile is asked from, and how often
-- a resume asked it already
select agent_id, user_id, demographics, profile_retries
from sandbox_agents
where sandbox_id = $sandbox_id and profile_source = 'failed'
order by agent_id
