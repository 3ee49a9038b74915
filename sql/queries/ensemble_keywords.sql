-- the keywords of a dataset under one model, with their canonical (vocabulary) keyword
select k.item_id, k.source, k.polarity, k.keyword, coalesce(v.canonical, k.keyword) as canonical
from item_keywords k
left join keyword_vocabulary v using (dataset, model, keyword)
where k.dataset = $dataset and k.model = $model
order by k.item_id, k.source, k.polarity, k.keyword
