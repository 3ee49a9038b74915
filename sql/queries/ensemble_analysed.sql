-- the item-analysis state of a dataset under one model: what is done, what failed
select item_id, source, status, n_pros, n_cons, error, coalesce(retries, 0) as retries
from item_analysis
where dataset = $dataset and model = $model
order by item_id, source
