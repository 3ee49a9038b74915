-- held-out (test) ratings of each selected user in time order, with item text and the truth
with test as (
    select s.user_id, s.item_id, r.rating as truth, r.ts
    from splits s
    join ratings r using (dataset, user_id, item_id)
    where s.dataset = $dataset and s.fold = $fold and s.split = 'test'
      and s.user_id in (select unnest($user_ids::varchar[]))
),
final as (
    select t.user_id, t.item_id, i.title, i.year, i.genres, i.text, t.truth, t.ts
    from test t
    join items i on i.dataset = $dataset and i.item_id = t.item_id
)
select * from final order by user_id, ts, item_id
