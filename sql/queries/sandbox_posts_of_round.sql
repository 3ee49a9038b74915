select agent_id, post_id, text from sandbox_posts
where sandbox_id = $sandbox_id and round = $round order by agent_id, post_id
