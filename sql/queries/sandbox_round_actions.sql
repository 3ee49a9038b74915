-- one round's sandbox_actions rows as stored (the contract reads them back before the write commits)
select * from sandbox_actions where sandbox_id = $sandbox_id and round = $round order by agent_id, step
