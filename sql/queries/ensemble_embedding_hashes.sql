select item_id, text_hash
from item_embeddings
where dataset = $dataset and model = $model
order by item_id
