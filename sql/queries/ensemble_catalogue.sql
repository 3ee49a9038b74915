-- every item of a dataset with its train popularity in one fold (the most rated are analysed first)
with train as (
    select item_id, count(*) as n_train
    from splits
    where dataset = $dataset and fold = $fold and split = 'train'
    group by item_id
),
final as (
    select i.item_id, i.title, i.year, i.genres, i.text, coalesce(t.n_train, 0) as n_train
    from items i
    left join train t using (item_id)
    where i.dataset = $dataset
)
select * from final order by n_train desc, item_id
