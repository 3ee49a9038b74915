-- start (or restart) round $round: whatever an interrupted run wrote for it or later rounds goes first,
-- then the posts of round - 1 become memories of the friends who read them (new_memories)
delete from sandbox_actions where sandbox_id = $sandbox_id and round >= $round;
delete from sandbox_pages where sandbox_id = $sandbox_id and round >= $round;
delete from sandbox_ratings where sandbox_id = $sandbox_id and round >= $round;
delete from sandbox_messages where sandbox_id = $sandbox_id and round >= $round;
delete from sandbox_posts where sandbox_id = $sandbox_id and round >= $round;
delete from sandbox_memories where sandbox_id = $sandbox_id and round >= $round;
delete from sandbox_rounds where sandbox_id = $sandbox_id and round >= $round;
insert into sandbox_rounds (sandbox_id, round, status, started, recommender)
values ($sandbox_id, $round, 'running', current_timestamp, $recommender);
insert into sandbox_memories (sandbox_id, agent_id, round, seq, kind, text, importance, embedding)
select $sandbox_id, agent_id, $round,
       (select coalesce(max(seq), 0) from sandbox_memories where sandbox_id = $sandbox_id) + row_number() over (order by k),
       kind, text, importance, embedding::float[]
from new_memories;
update sandbox_runs set status = 'running', updated = current_timestamp where sandbox_id = $sandbox_id;
