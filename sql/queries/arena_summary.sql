-- an arena run's agreement and calibration rows, for printing
select * from arena_agreement where run_id = $run_id order by fold, protocol, metric, judge;
