-- the report's positivity calibration table: like-rate gap (points), ECE and Brier of P(like) per judge
select fold, judge, like_rate, real_like_rate, like_rate_gap, ece, brier, n
from arena_calibration
where run_id = $run_id
order by fold, judge
