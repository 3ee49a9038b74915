-- every memory of the sandbox before round $round (with its embedding), oldest first
select agent_id, round, seq, kind, text, importance, embedding
from sandbox_memories where sandbox_id = $sandbox_id and round < $round
order by agent_id, seq
