select sandbox_id, dataset, fold, model, recommender, config, status, rounds_done, created, updated
from sandbox_runs where sandbox_id = $sandbox_id
