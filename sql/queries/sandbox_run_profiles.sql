-- the Phase-1 profile per user of a doppel run: its last initial/refine version (updates saw held-out truth)
select user_id, text as profile
from profiles
where run_id = $run_id and stage in ('initial', 'refine')
qualify row_number() over (partition by user_id order by version desc, fold) = 1
