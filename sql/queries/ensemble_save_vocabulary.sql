-- new_vocabulary: keyword, canonical, n_items, similarity; replaces the dataset's vocabulary for this model
delete from keyword_vocabulary where dataset = $dataset and model = $model;

insert into keyword_vocabulary (dataset, model, keyword, canonical, n_items, similarity, method, run_id)
select $dataset, $model, keyword, canonical, n_items, similarity, $method, $run_id from new_vocabulary;
