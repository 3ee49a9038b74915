-- the train split of one fold (for baselines)
select s.user_id, s.item_id, r.rating
from splits s
join ratings r using (dataset, user_id, item_id)
where s.dataset = $dataset and s.fold = $fold and s.split = 'train'
