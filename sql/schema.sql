-- doppel's core tables (and macros over them). Applied first; then every other sql/*.sql in name order
-- (ensemble.sql, sandbox.sql, ...), then sql/migrations/ for older files, then the views (tasks/store/schema.py).
-- Dataset tables are keyed by dataset name; run tables by run_id. Ids are strings.

create table if not exists datasets (
    dataset     varchar primary key,
    source      varchar not null,        -- path, url or synthetic:seed=..
    folds       varchar[] not null,
    n_users     integer not null,
    n_items     integer not null,
    n_ratings   integer not null,
    loaded_at   timestamp not null default current_timestamp
);

create table if not exists items (
    dataset     varchar not null,
    item_id     varchar not null,
    title       varchar not null,
    year        integer,
    genres      varchar not null,        -- "|"-joined
    text        varchar not null,        -- overview; "" when the dataset has none
    primary key (dataset, item_id)
);

create table if not exists users (
    dataset     varchar not null,
    user_id     varchar not null,
    age         integer,
    gender      varchar,
    occupation  varchar,
    zip         varchar,
    text        varchar not null,
    primary key (dataset, user_id)
);

create table if not exists ratings (
    dataset     varchar not null,
    user_id     varchar not null,
    item_id     varchar not null,
    rating      integer not null,
    ts          bigint not null,         -- unix seconds
    primary key (dataset, user_id, item_id)
);

create table if not exists splits (
    dataset     varchar not null,
    fold        varchar not null,        -- u1..u5, ua, ub, or a generic adapter's fold name
    split       varchar not null,        -- train | test
    user_id     varchar not null,
    item_id     varchar not null,
    primary key (dataset, fold, user_id, item_id)
);

create table if not exists runs (
    run_id        varchar primary key,
    dataset       varchar not null,
    folds         varchar[] not null,
    started       timestamp not null,
    finished      timestamp,
    status        varchar not null,      -- running | finished | failed | interrupted
    config        json not null,         -- settings without secrets
    code_version  varchar not null,
    prompt_hashes json not null,         -- {prompt name: sha256 of its template}
    model         varchar not null,
    base_url      varchar not null
);

-- the users a run simulates, one row per (run, fold, user); status tells resume what is left
create table if not exists run_users (
    run_id      varchar not null,
    fold        varchar not null,
    user_id     varchar not null,
    status      varchar not null,        -- pending | done | partial (some pairs failed)
    n_pairs     integer not null,
    n_failed    integer not null default 0,
    n_calls     integer not null default 0,
    retries     integer not null default 0, -- reruns that re-asked failed pairs
    finished_at timestamp,
    primary key (run_id, fold, user_id)
);

create table if not exists profiles (
    run_id      varchar not null,
    fold        varchar not null,
    user_id     varchar not null,
    version     integer not null,        -- 1, 2, ... in the order they were written
    stage       varchar not null,        -- initial | refine | update
    text        varchar not null,
    call_key    varchar,
    primary key (run_id, fold, user_id, version)
);

-- exactly one row per requested (run, fold, user, item); failed pairs keep rating null + reason
create table if not exists simulated_ratings (
    run_id      varchar not null,
    fold        varchar not null,
    user_id     varchar not null,
    item_id     varchar not null,
    rating      integer,
    status      varchar not null,        -- ok | failed
    reason      varchar,
    batch       integer not null,
    attempts    integer not null,
    call_key    varchar,
    rating_probs double[],               -- the model's P(1..5) (from token logprobs or draws); null if none
    rating_probs_source varchar,         -- logprobs | samples (the share of draws per rating); null with no rating_probs
    rating_probs_draws integer,          -- samples: the valid draws behind rating_probs
    primary key (run_id, fold, user_id, item_id)
);

create table if not exists llm_calls (
    call_key          varchar not null,  -- sha256(model, messages, params, sample index)
    run_id            varchar not null,
    fold              varchar,
    user_id           varchar,
    prompt_name       varchar not null,
    prompt_hash       varchar not null,
    model             varchar not null,
    status            varchar not null,  -- ok | invalid | error
    cached            boolean not null,  -- answered from the response cache (no HTTP call)
    attempts          integer not null,  -- HTTP attempts including client retries
    prompt_tokens     integer not null,
    completion_tokens integer not null,
    latency_s         double not null,  -- the HTTP call (slot held), not the time queued for a slot
    cached_prompt_tokens integer not null default 0,  -- reused from the server's prompt-prefix cache
    error             varchar,
    response          varchar,
    created_at        timestamp not null default current_timestamp
);

create table if not exists validation_results (
    run_id      varchar not null,
    suite       varchar not null,
    success     boolean not null,
    n_rows      integer not null,
    failures    json not null,           -- [{expectation, column, details}]
    checked_at  timestamp not null default current_timestamp
);

create table if not exists metrics (
    run_id      varchar not null,
    fold        varchar not null,        -- a fold or "all"
    simulator   varchar not null,        -- llm | baseline:<name> | hybrid:<mode> | ...
    metric      varchar not null,        -- rmse | mae | exact | off_by_one | close | tv | n
    value       double,
    primary key (run_id, fold, simulator, metric)
);

-- what a run's scores were computed from: a fingerprint of its simulated_ratings and profiles rows
-- at scoring time. A rerun of a finished run answers from the stored scores only while the rows
-- still match (an edited or corrupted table is validated and scored again).
create table if not exists run_fingerprints (
    run_id      varchar primary key,
    fingerprint varchar not null,
    scored_at   timestamp not null
);

-- counts and order-independent hashes of every column of a run's output rows
create or replace macro run_fingerprint(rid) as (
    (select count(*) || ':' || coalesce(bit_xor(hash(fold, user_id, item_id, rating, status, reason, batch,
                                                      attempts, call_key)), 0)
     from simulated_ratings where run_id = rid)
    || '|' ||
    (select count(*) || ':' || coalesce(bit_xor(hash(fold, user_id, version, stage, text)), 0)
     from profiles where run_id = rid)
);

-- Each rating of a dataset's fold f (every fold when f is null) with its part: 'test' (held out), 'slice' (the calibration slice: a
-- seeded share of each user's train ratings, held out of the profile when a run rates it) or 'fit'
-- (the rest of train). The slice is order-free, so any subset of users gets the same one: each
-- user's train ratings sorted by md5('<seed>:<user_id>:<item_id>'), the last round(n * frac) of
-- them, keeping at least 5 outside. tasks/fidelity/features.py's calibration_slice(how="hash")
-- computes the same slice in Python.
create or replace macro fold_parts(ds, f, slice_frac, slice_seed) as table
with fold_rows as (
    select s.fold, s.user_id, s.item_id, s.split, r.rating, r.ts
    from splits s
    join ratings r using (dataset, user_id, item_id)
    where s.dataset = ds and (f is null or s.fold = f)
),
ranked as (
    select *,
           row_number() over (partition by fold, user_id, split
                              order by md5(slice_seed::varchar || ':' || user_id || ':' || item_id)) as key_rank,
           count(*) over (partition by fold, user_id, split) as n
    from fold_rows
)
select fold, user_id, item_id, rating, ts,
       case when split = 'test' then 'test'
            when key_rank > n - least(floor(n * slice_frac + 0.5), greatest(n - 5, 0)) then 'slice'
            else 'fit' end as part
from ranked;
