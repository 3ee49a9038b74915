insert into runs (run_id, dataset, folds, started, finished, status, config, code_version, prompt_hashes, model, base_url)
values ($run_id, $dataset, $folds::varchar[], current_timestamp, null, 'running', $config::json, $code_version,
        $prompt_hashes::json, $model, $base_url)
on conflict (run_id) do update set status = 'running', finished = null;
