-- a spine run's successful LLM ratings on one fold (scored beside the voters, like = rating >= threshold)
select user_id, item_id, rating
from simulated_ratings
where run_id = $run_id and fold = $fold and status = 'ok'
order by user_id, item_id
