select item_id, text_hash, embedding
from item_embeddings
where dataset = $dataset and model = $model
order by item_id
