-- the live log: actions and chat lines after the given cursors, oldest first
select * from (
    select 'action' as type, seq, round, agent_id, action as what, detail as text, status, created
    from sandbox_actions where sandbox_id = $sandbox_id and seq > $after_action
    union all
    select 'message' as type, m.seq, m.round, m.speaker_id as agent_id, 'to ' || m.listener_id as what, m.text,
           'ok' as status, null as created
    from sandbox_messages m where m.sandbox_id = $sandbox_id and m.seq > $after_message
) order by round, seq, type
limit $limit
