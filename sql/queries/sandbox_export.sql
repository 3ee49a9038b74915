-- one sandbox table's rows of one sandbox ({table} is one of tasks/sandbox/store.py TABLES)
select * from {table} where sandbox_id = $sandbox_id order by all
