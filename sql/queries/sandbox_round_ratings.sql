-- one round's sandbox_ratings rows as stored (the contract reads them back before the write commits)
select * from sandbox_ratings where sandbox_id = $sandbox_id and round = $round order by agent_id, item_id
