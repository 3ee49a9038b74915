-- new_embeddings: item_id, text_hash, embedding (list of floats)
insert or replace into item_embeddings (dataset, model, item_id, text_hash, embedding)
select $dataset, $model, item_id, text_hash, embedding::float[] from new_embeddings;
