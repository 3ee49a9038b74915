-- every arena run's id, latest first (the hint of an unknown --arena-run)
select run_id
from runs
where json_extract_string(config, '$.kind') = 'arena'
order by started desc
