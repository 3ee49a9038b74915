-- a resume's profiles asked again (new_profiles: agent_id, profile, profile_source, profile_error); before it,
-- record_calls.sql writes new_calls. Each counts as one more retry, built or failed again.
update sandbox_agents a
set profile = n.profile, profile_source = n.profile_source, profile_error = n.profile_error,
    profile_retries = coalesce(a.profile_retries, 0) + 1
from new_profiles n
where a.sandbox_id = $sandbox_id and a.agent_id = n.agent_id
