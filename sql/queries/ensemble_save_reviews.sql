-- new_reviews: item_id, user_id, review
delete from item_reviews where dataset = $dataset;

insert into item_reviews (dataset, item_id, user_id, review)
select distinct on (item_id, user_id) $dataset, item_id, user_id, review from new_reviews;
