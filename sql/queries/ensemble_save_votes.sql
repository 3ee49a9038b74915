-- new_votes: one row per held-out pair (see sql/ensemble.sql); replaces the run's votes for the fold
delete from votes where run_id = $run_id and fold = $fold;

insert into votes (run_id, fold, user_id, item_id, rating, truth_like, f_mat, f_mat_vote, f_sim, f_sim_vote,
                   f_sta, f_sta_vote, ensemble, ensemble_score, decided_by)
select $run_id, $fold, user_id, item_id, rating, truth_like, f_mat, f_mat_vote, f_sim, f_sim_vote,
       f_sta, f_sta_vote, ensemble, ensemble_score, decided_by
from new_votes;
