-- the last $history_n train ratings of each selected user, oldest first, with item text; a run that
-- rates the calibration slice ($target = 'slice') builds the profile without the slice's ratings
with train as (
    select p.user_id, p.item_id, p.rating, p.ts
    from fold_parts($dataset, $fold, $slice_frac, $slice_seed) p
    where p.part in ('fit', case when $target = 'slice' then 'fit' else 'slice' end)
      and p.user_id in (select unnest($user_ids::varchar[]))
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
