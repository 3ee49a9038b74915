-- the items each selected user rates, with item text and the truth (null where the user never rated
-- the item): the held-out (test) ratings in time order, the calibration slice of train when
-- $target = 'slice', or every item an arena run listed for the user when $target = 'arena'
with test_or_slice as (
    select p.user_id, p.item_id, p.rating as truth, p.ts
    from fold_parts($dataset, $fold, $slice_frac, $slice_seed) p
    where p.part = $target
      and p.user_id in (select unnest($user_ids::varchar[]))
),
arena_listed as (
    select distinct l.user_id, l.item_id
    from arena_lists l
    where $target = 'arena' and l.run_id = $arena_run and l.fold = $fold
      and l.user_id in (select unnest($user_ids::varchar[]))
),
arena_rated as (
    -- the held-out items first in time order, then the catalogue's unrated ones by item id
    select a.user_id, a.item_id, t.rating as truth, t.ts
    from arena_listed a
    left join fold_parts($dataset, $fold, $slice_frac, $slice_seed) t
      on t.part = 'test' and t.user_id = a.user_id and t.item_id = a.item_id
),
rated as (
    select * from test_or_slice
    union all
    select * from arena_rated
),
final as (
    select t.user_id, t.item_id, i.title, i.year, i.genres, i.text, t.truth, t.ts
    from rated t
    join items i on i.dataset = $dataset and i.item_id = t.item_id
)
select * from final order by user_id, ts nulls last, item_id
