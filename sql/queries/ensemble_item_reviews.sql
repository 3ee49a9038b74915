-- up to $per_item reviews per item, longest first (the most to say), then by user id
with ranked as (
    select item_id, user_id, review,
           row_number() over (partition by item_id order by length(review) desc, user_id) as k
    from item_reviews
    where dataset = $dataset and length(trim(review)) > 0
)
select item_id, review from ranked where k <= $per_item order by item_id, k
