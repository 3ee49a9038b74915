-- a run's profiles rows (every column, in table order)
select *
from profiles
where run_id = $run_id
order by fold, user_id, version
