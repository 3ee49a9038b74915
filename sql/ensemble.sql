-- Tables of the ensemble simulator (`doppel ensemble`). Safe to run repeatedly.
-- Item analysis is keyed by (dataset, model): keywords describe items, not runs, so every run with the
-- same model reuses them; run_id says which run wrote them. Votes and metrics belong to a run.

-- one row per analysed (item, source): the resume state of the item-analysis fan-out
create table if not exists item_analysis (
    dataset     varchar not null,
    model       varchar not null,        -- the LLM's model id
    item_id     varchar not null,
    source      varchar not null,        -- obj (item facts) | sub (reviews)
    status      varchar not null,        -- ok | failed
    n_pros      integer not null,
    n_cons      integer not null,
    error       varchar,                 -- why it failed (null when ok)
    call_key    varchar,                 -- the llm_calls row of the answer used
    prompt_hash varchar not null,
    run_id      varchar not null,
    analysed_at timestamp not null default current_timestamp,
    retries     integer default 0,       -- reruns that asked again after it failed (each a new sample)
    primary key (dataset, model, item_id, source)
);

create table if not exists item_keywords (
    dataset     varchar not null,
    model       varchar not null,
    item_id     varchar not null,
    source      varchar not null,        -- obj | sub
    polarity    varchar not null,        -- pro | con
    keyword     varchar not null,        -- lowercase, 1-4 words, as the LLM wrote it (normalised)
    run_id      varchar not null,
    primary key (dataset, model, item_id, source, polarity, keyword)
);

-- the shared vocabulary: every distinct keyword and the canonical keyword it was unified with
create table if not exists keyword_vocabulary (
    dataset     varchar not null,
    model       varchar not null,
    keyword     varchar not null,
    canonical   varchar not null,        -- the most used keyword of its group (itself when unmerged)
    n_items     integer not null,        -- items using this keyword
    similarity  double not null,         -- cosine similarity to the canonical keyword
    method      varchar not null,        -- e.g. leader:all-MiniLM-L6-v2:0.80
    run_id      varchar not null,
    primary key (dataset, model, keyword)
);

create table if not exists item_embeddings (
    dataset     varchar not null,
    model       varchar not null,        -- the sentence-embedding model
    item_id     varchar not null,
    text_hash   varchar not null,        -- sha256 prefix of the embedded text: a changed text is re-embedded
    embedding   float[] not null,        -- unit norm
    primary key (dataset, model, item_id)
);

-- review texts of datasets that have them (generic adapter: a `review` column in the ratings CSV)
create table if not exists item_reviews (
    dataset     varchar not null,
    item_id     varchar not null,
    user_id     varchar not null,
    review      varchar not null,
    primary key (dataset, item_id, user_id)
);

-- one row per held-out (run, fold, user, item): each voter's score (null = abstained) and vote
create table if not exists votes (
    run_id         varchar not null,
    fold           varchar not null,
    user_id        varchar not null,
    item_id        varchar not null,
    rating         integer not null,     -- the real held-out rating
    truth_like     boolean not null,     -- rating >= the run's like threshold
    f_mat          double,               -- keyword matching score in [0, 1]
    f_mat_vote     boolean,              -- null = abstained
    f_sim          double,               -- embedding similarity score
    f_sim_vote     boolean,
    f_sta          double,               -- SASRec like probability
    f_sta_vote     boolean,
    ensemble       boolean not null,     -- the 2-of-3 decision
    ensemble_score double not null,
    decided_by     varchar not null,     -- vote | mean | prior
    primary key (run_id, fold, user_id, item_id)
);
