-- item_analysis before a rerun asked a failed analysis again as a new sample (it got the cached failure back)
alter table item_analysis add column if not exists retries integer default 0;
