-- the first choice of each agent per round (what it decided to do), and failed decisions
select action, count(*) as n
from (select case when status = 'failed' then 'failed:' || action else action end as action
      from sandbox_actions where sandbox_id = $sandbox_id and step = 0)
group by action order by n desc, action
