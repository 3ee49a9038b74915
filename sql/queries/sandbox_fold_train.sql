-- the train ratings of one fold with what an agent's history and the recommender need, oldest first per user
select s.user_id, s.item_id, r.rating, r.ts, i.title, i.year, i.genres, i.text
from splits s
join ratings r using (dataset, user_id, item_id)
join items i using (dataset, item_id)
where s.dataset = $dataset and s.fold = $fold and s.split = 'train'
order by s.user_id, r.ts, s.item_id
