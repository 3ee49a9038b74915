-- the report's reliability diagram: mean P(like) vs the real like rate per bin (empty bins left out)
select fold, judge, bin, n, mean_p, like_rate
from arena_reliability
where run_id = $run_id and n > 0
order by fold, judge, bin
