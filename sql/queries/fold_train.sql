-- the ratings of one fold that baselines may learn from: the train split, minus the calibration
-- slice when the run rates that slice ($target = 'slice'); ordered, so a model sees the rows the same way every time
select p.user_id, p.item_id, p.rating
from fold_parts($dataset, $fold, $slice_frac, $slice_seed) p
where p.part in ('fit', case when $target = 'slice' then 'fit' else 'slice' end)
order by p.user_id, p.item_id  -- the models' training order: SVD's SGD depends on it
