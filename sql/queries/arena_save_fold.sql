-- one arena fold's tables, replacing a previous run of the same fold (frames registered by the caller)
delete from arena_recommenders where run_id = $run_id and fold = $fold;
delete from arena_lists where run_id = $run_id and fold = $fold;
delete from arena_judgments where run_id = $run_id and fold = $fold;
delete from arena_metrics where run_id = $run_id and fold = $fold;
delete from arena_agreement where run_id = $run_id and fold = $fold;
delete from arena_calibration where run_id = $run_id and fold = $fold;
delete from arena_reliability where run_id = $run_id and fold = $fold;
insert into arena_recommenders by name select * from new_recommenders;
insert into arena_lists by name select * from new_lists;
insert into arena_judgments by name select * from new_judgments;
insert into arena_metrics by name select * from new_metrics;
insert into arena_agreement by name select * from new_agreement;
insert into arena_calibration by name select * from new_calibration;
insert into arena_reliability by name select * from new_reliability;
