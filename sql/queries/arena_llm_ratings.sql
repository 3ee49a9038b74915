-- an LLM run's ratings of one fold's listed pairs, with its distribution P(1..5) where it stored one;
-- a failed pair has no rating (the judge leaves it out and says how many; its reason is in the run's tables)
select user_id, item_id, rating, rating_probs, status
from simulated_ratings
where run_id = $run_id and fold = $fold
order by user_id, item_id
