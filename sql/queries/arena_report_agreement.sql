-- the report's rank agreement table (both protocols, every metric and judge)
select fold, protocol, metric, judge, tau, tau_lo, tau_hi, rho, ceiling_ratio
from arena_agreement
where run_id = $run_id
order by fold, protocol, metric, judge
