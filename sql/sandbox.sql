-- Tables of the agent sandbox (`doppel sandbox`). Safe to run repeatedly.
-- Everything belongs to a sandbox (sandbox_id) and, for what happens in rounds, to a round (1..).
-- Round 0 is the set-up: agents, profiles, the friendship graph, the memories seeded from real ratings.

create table if not exists sandbox_runs (
    sandbox_id    varchar primary key,
    dataset       varchar not null,
    fold          varchar not null,       -- whose train split seeds the recommender and the histories
    model         varchar not null,
    recommender   varchar not null,       -- random | popular | mf
    config        json not null,          -- settings without secrets
    code_version  varchar not null,
    prompt_hashes json not null,
    created       timestamp not null default current_timestamp,
    updated       timestamp not null default current_timestamp,
    status        varchar not null,       -- setup | running | paused | finished | failed | interrupted
    rounds_done   integer not null default 0
);

create table if not exists sandbox_agents (
    sandbox_id     varchar not null,
    agent_id       varchar not null,      -- A01, A02, ...
    user_id        varchar not null,      -- the dataset user it is built from
    demographics   varchar not null,
    profile        varchar not null,
    profile_source varchar not null,      -- run:<run id> | built | failed (then demographics only)
    profile_error  varchar,
    activity       double not null,       -- chance of acting in a round
    profile_retries integer default 0,    -- resumes that asked a failed profile again (each a new sample)
    primary key (sandbox_id, agent_id)
);

create table if not exists sandbox_friends (
    sandbox_id  varchar not null,
    agent_id    varchar not null,         -- undirected: agent_id < friend_id
    friend_id   varchar not null,
    source      varchar not null,         -- generated | file
    primary key (sandbox_id, agent_id, friend_id)
);

create table if not exists sandbox_rounds (
    sandbox_id     varchar not null,
    round          integer not null,
    status         varchar not null,      -- running | finished
    started        timestamp not null,
    finished       timestamp,
    wall_s         double,
    active_agents  integer,
    new_calls      integer,
    cached_calls   integer,
    failed_actions integer,
    recommender    json,                  -- what the recommender was trained on this round
    primary key (sandbox_id, round)
);

-- every step an agent took: decide/recommender/next_page/search/watch/rate/leave/chat/post/nothing/reflect
create table if not exists sandbox_actions (
    sandbox_id  varchar not null,
    round       integer not null,
    agent_id    varchar not null,
    step        integer not null,         -- order within the agent's round
    action      varchar not null,
    detail      varchar not null,
    status      varchar not null,         -- ok | failed (the decision stayed invalid after repairs)
    error       varchar,
    call_key    varchar,                  -- the llm_calls row of the answer (null: no call)
    seq         bigint not null,          -- write order within the sandbox (the live log)
    created     timestamp not null default current_timestamp,
    primary key (sandbox_id, round, agent_id, step)
);

create table if not exists sandbox_pages (
    sandbox_id  varchar not null,
    round       integer not null,
    agent_id    varchar not null,
    step        integer not null,
    page        integer not null,
    query       varchar,                  -- null: recommendations, else a keyword search
    recommender varchar not null,
    item_ids    varchar[] not null,       -- what was shown, in order
    primary key (sandbox_id, round, agent_id, step)
);

create table if not exists sandbox_ratings (
    sandbox_id  varchar not null,
    round       integer not null,
    agent_id    varchar not null,
    user_id     varchar not null,
    item_id     varchar not null,
    rating      integer not null,         -- 1..5 stars after watching
    feeling     varchar not null,
    call_key    varchar,
    primary key (sandbox_id, agent_id, item_id)
);

create table if not exists sandbox_messages (
    sandbox_id  varchar not null,
    round       integer not null,
    chat_id     varchar not null,
    turn        integer not null,
    speaker_id  varchar not null,
    listener_id varchar not null,
    text        varchar not null,
    seq         bigint not null,
    primary key (sandbox_id, chat_id, turn)
);

create table if not exists sandbox_posts (
    sandbox_id  varchar not null,
    round       integer not null,         -- friends read it in round + 1
    agent_id    varchar not null,
    post_id     varchar not null,
    text        varchar not null,
    primary key (sandbox_id, post_id)
);

create table if not exists sandbox_memories (
    sandbox_id  varchar not null,
    agent_id    varchar not null,         -- whose memory
    round       integer not null,
    seq         bigint not null,
    kind        varchar not null,         -- history | watch | chat | post | post_read | reflection
    text        varchar not null,
    importance  integer not null,         -- 1..10 (the LLM's where it wrote the observation)
    embedding   float[],                  -- all-MiniLM-L6-v2, unit norm
    primary key (sandbox_id, agent_id, seq)
);
