-- the stored vocabulary of a dataset under one model
select keyword, canonical, n_items, similarity, method
from keyword_vocabulary
where dataset = $dataset and model = $model
order by n_items desc, keyword
