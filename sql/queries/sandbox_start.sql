-- register a sandbox (a rerun keeps its row and config) and mark it running
insert into sandbox_runs (sandbox_id, dataset, fold, model, recommender, config, code_version, prompt_hashes, status)
values ($sandbox_id, $dataset, $fold, $model, $recommender, $config, $code_version, $prompt_hashes, 'setup')
on conflict (sandbox_id) do nothing;
