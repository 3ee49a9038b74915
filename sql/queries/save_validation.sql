insert into validation_results (run_id, suite, success, n_rows, failures)
values ($run_id, $suite, $success, $n_rows, $failures::json);
