-- the report's scatter: real vs each judge's nDCG@10 per recommender, observed-items protocol
select fold, judge, recommender, real_value, simulated_value
from arena_scatter
where run_id = $run_id and protocol = 'observed' and metric = 'ndcg@10'
order by fold, judge, recommender
