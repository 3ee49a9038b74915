-- the last $history_n train ratings of each selected user, oldest first, with item text
with train as (
    select s.user_id, s.item_id, r.rating, r.ts
    from splits s
    join ratings r using (dataset, user_id, item_id)
    where s.dataset = $dataset and s.fold = $fold and s.split = 'train'
      and s.user_id in (select unnest($user_ids::varchar[]))
),
ranked as (
    select *, row_number() over (partition by user_id order by ts desc, item_id desc) as recency
    from train
),
final as (
    select r.user_id, r.item_id, i.title, i.year, i.genres, i.text, r.rating, r.ts
    from ranked r
    join items i on i.dataset = $dataset and i.item_id = r.item_id
    where r.recency <= $history_n
)
select * from final order by user_id, ts, item_id
