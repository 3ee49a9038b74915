-- the users registered for a run, per fold
select fold, user_id from run_users where run_id = $run_id order by fold, user_id
