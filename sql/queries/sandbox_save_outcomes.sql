-- finished agents of round $round in one transaction (before it, record_calls.sql writes their calls);
-- k orders rows as the agents produced them
insert into sandbox_actions (sandbox_id, round, agent_id, step, action, detail, status, error, call_key, seq)
select $sandbox_id, $round, agent_id, step, action, detail, status, error, call_key,
       (select coalesce(max(seq), 0) from sandbox_actions where sandbox_id = $sandbox_id) + row_number() over (order by k)
from new_actions;

insert into sandbox_pages (sandbox_id, round, agent_id, step, page, query, recommender, item_ids)
select $sandbox_id, $round, agent_id, step, page, query, recommender, item_ids::varchar[] from new_pages;

insert into sandbox_ratings (sandbox_id, round, agent_id, user_id, item_id, rating, feeling, call_key)
select $sandbox_id, $round, agent_id, user_id, item_id, rating, feeling, call_key from new_ratings;

insert into sandbox_messages (sandbox_id, round, chat_id, turn, speaker_id, listener_id, text, seq)
select $sandbox_id, $round, chat_id, turn, speaker_id, listener_id, text,
       (select coalesce(max(seq), 0) from sandbox_messages where sandbox_id = $sandbox_id) + row_number() over (order by k)
from new_messages;

insert into sandbox_posts (sandbox_id, round, agent_id, post_id, text)
select $sandbox_id, $round, agent_id, post_id, text from new_posts;

insert into sandbox_memories (sandbox_id, agent_id, round, seq, kind, text, importance, embedding)
select $sandbox_id, agent_id, $round,
       (select coalesce(max(seq), 0) from sandbox_memories where sandbox_id = $sandbox_id) + row_number() over (order by k),
       kind, text, importance, embedding::float[]
from new_memories;
