-- the votes rows of one run's fold as stored (the votes contract reads them back before the write commits)
select * from votes where run_id = $run_id and fold = $fold order by user_id, item_id
