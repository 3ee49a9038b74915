-- the set-up in one transaction: new_agents, new_friends, new_memories (round 0); before it, record_calls.sql
-- writes new_calls
insert into sandbox_agents (sandbox_id, agent_id, user_id, demographics, profile, profile_source, profile_error,
                            activity)
select $sandbox_id, agent_id, user_id, demographics, profile, profile_source, profile_error, activity
from new_agents;

insert into sandbox_friends (sandbox_id, agent_id, friend_id, source)
select $sandbox_id, agent_id, friend_id, source from new_friends;

insert into sandbox_memories (sandbox_id, agent_id, round, seq, kind, text, importance, embedding)
select $sandbox_id, agent_id, 0, seq, kind, text, importance, embedding::float[] from new_memories;
