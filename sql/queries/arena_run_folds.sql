-- the folds an arena run listed recommendations for, how many users each, and its dataset
-- (doppel run --target arena checks them before it starts)
select l.fold, count(distinct l.user_id) as users, any_value(r.dataset) as dataset
from arena_lists l
join runs r using (run_id)
where l.run_id = $arena_run
group by l.fold
order by l.fold
