-- the run `doppel report` shows by default (sql/staging/stg_runs_preferred.sql says which)
select run_id from stg_runs_preferred order by preference limit 1
