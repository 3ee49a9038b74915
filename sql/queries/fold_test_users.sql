-- test users of one fold, in a stable order (sampling happens in Python with a seed)
select distinct user_id
from splits
where dataset = $dataset and fold = $fold and split = 'test'
order by user_id
