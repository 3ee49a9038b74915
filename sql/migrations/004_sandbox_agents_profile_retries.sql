-- sandbox_agents before a resume asked a failed profile again as a new sample (it got the cached failure back)
alter table sandbox_agents add column if not exists profile_retries integer default 0;
