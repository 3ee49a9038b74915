-- the latest memories of every agent (for the web page), newest first
select agent_id, round, kind, text, importance
from sandbox_memories where sandbox_id = $sandbox_id
qualify row_number() over (partition by agent_id order by seq desc) <= $per_agent
order by agent_id, seq desc
