-- every requested pair of a run with the truth (failed pairs have pred null), in a fixed order
select fold, user_id, item_id, simulated as pred, status, batch, real as truth, rating_probs
from stg_simulated_pairs
where run_id = $run_id
order by fold, user_id, item_id
