-- an RL run's agent rows of `metrics` as stored (the rl_results contract reads them back before the write commits)
select * from metrics where run_id = $run_id and simulator like 'rl:%' order by fold, simulator, metric
