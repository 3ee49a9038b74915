-- the train and test ratings of one fold, with timestamps (train sequences, held-out pairs)
select s.split, s.user_id, s.item_id, r.rating, r.ts
from splits s
join ratings r using (dataset, user_id, item_id)
where s.dataset = $dataset and s.fold = $fold
order by s.split, s.user_id, r.ts, s.item_id
