insert into run_users (run_id, fold, user_id, status, n_pairs)
select $run_id, fold, user_id, 'pending', n_pairs from new_run_users
on conflict do nothing;
