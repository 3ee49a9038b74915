-- finished item analyses in one transaction; new_analysis (item_id, source, status, n_pros, n_cons, error,
-- call_key, prompt_hash), new_keywords (item_id, source, polarity, keyword); before it, record_calls.sql
-- writes new_calls. A rerun replaces what it recomputed.
delete from item_keywords k using new_analysis a
where k.dataset = $dataset and k.model = $model and k.item_id = a.item_id and k.source = a.source;

insert into item_keywords (dataset, model, item_id, source, polarity, keyword, run_id)
select distinct $dataset, $model, item_id, source, polarity, keyword, $run_id from new_keywords;

insert or replace into item_analysis (dataset, model, item_id, source, status, n_pros, n_cons, error, call_key,
                                      prompt_hash, run_id, analysed_at, retries)
select $dataset, $model, item_id, source, status, n_pros, n_cons, error, call_key, prompt_hash, $run_id,
       current_timestamp, retries
from new_analysis;
