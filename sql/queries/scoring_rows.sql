-- every requested pair of a run with the truth and the train split it was simulated from
select s.fold, s.user_id, s.item_id, s.rating as pred, s.status, s.batch, r.rating as truth, s.rating_probs
from simulated_ratings s
join runs using (run_id)
join ratings r on r.dataset = runs.dataset and r.user_id = s.user_id and r.item_id = s.item_id
where s.run_id = $run_id
order by s.fold, s.user_id, s.item_id
