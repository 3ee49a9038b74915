-- replace one dataset's rows; new_* are the loader's DataFrames
delete from splits where dataset = $dataset;
delete from ratings where dataset = $dataset;
delete from users where dataset = $dataset;
delete from items where dataset = $dataset;
delete from datasets where dataset = $dataset;

insert into items (dataset, item_id, title, year, genres, text)
select $dataset, item_id, title, year, genres, text from new_items;

insert into users (dataset, user_id, age, gender, occupation, zip, text)
select $dataset, user_id, age, gender, occupation, zip, text from new_users;

insert into ratings (dataset, user_id, item_id, rating, ts)
select $dataset, user_id, item_id, rating, ts from new_ratings;

insert into splits (dataset, fold, split, user_id, item_id)
select $dataset, fold, split, user_id, item_id from new_splits;

insert into datasets (dataset, source, folds, n_users, n_items, n_ratings)
select $dataset, $source, $folds::varchar[],
       (select count(*) from new_users), (select count(*) from new_items), (select count(*) from new_ratings);
