select agent_id, friend_id, source from sandbox_friends where sandbox_id = $sandbox_id order by agent_id, friend_id
