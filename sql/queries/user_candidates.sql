-- the items each selected user rates, in time order, with item text and the truth: the held-out
-- (test) ratings, or the calibration slice of train when $target = 'slice'
with rated as (
    select p.user_id, p.item_id, p.rating as truth, p.ts
    from fold_parts($dataset, $fold, $slice_frac, $slice_seed) p
    where p.part = $target
      and p.user_id in (select unnest($user_ids::varchar[]))
),
final as (
    select t.user_id, t.item_id, i.title, i.year, i.genres, i.text, t.truth, t.ts
    from rated t
    join items i on i.dataset = $dataset and i.item_id = t.item_id
)
select * from final order by user_id, ts, item_id
