-- what each agent did first in each round: its decision, 'inactive' (its activity level kept it away),
-- or failed:<step> when the decision stayed invalid after the repairs
select action, count(*) as n
from (select case when status = 'failed' then 'failed:' || action
                  when action = 'nothing' and detail = 'inactive this round' then 'inactive'
                  else action end as action
      from sandbox_actions where sandbox_id = $sandbox_id and step = 0)
group by action order by n desc, action
