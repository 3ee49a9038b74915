-- what the agents rated before round $round: the recommender's extra training data and the watched sets
select agent_id, user_id, item_id, rating from sandbox_ratings
where sandbox_id = $sandbox_id and round < $round
order by round, agent_id, item_id
