-- The recommender arena (doppel arena, issue 23). run_id = the arena run (also a row of `runs`,
-- config.kind = 'arena'). A rerun of a fold replaces that fold's rows.

-- one row per recommender and fold: who entered, its family (circularity audit) and its cost
create table if not exists arena_recommenders (
    run_id varchar not null,
    fold varchar not null,
    recommender varchar not null,
    family varchar not null,        -- baseline | knn | mf | sequence | rl | plugin
    factory varchar not null,       -- built-in name or module:callable
    fit_s double,                   -- seconds (0 when its lists came from the cache)
    score_s double,
    cached boolean not null,
    primary key (run_id, fold, recommender)
);

-- what each recommender recommended: protocol 'observed' = its ranking of every held-out item of a
-- test user; 'catalogue' = its top-k among the items the user has not rated in train
create table if not exists arena_lists (
    run_id varchar not null,
    fold varchar not null,
    protocol varchar not null,
    recommender varchar not null,
    user_id varchar not null,
    item_id varchar not null,
    rank integer not null,          -- 1 = recommended first
    score double,                   -- the recommender's score (null: it could not score the pair)
    primary key (run_id, fold, protocol, recommender, user_id, item_id)
);

-- every judge's rating of each judged pair: judge 'real' = the held-out rating (catalogue pairs not in
-- test have none), hybrid:* = the calibrated hybrid's decodings, acc_no_<family> = the audit variants,
-- ensemble:vote = a finished ensemble run's 2-of-3 like vote (no rating)
create table if not exists arena_judgments (
    run_id varchar not null,
    fold varchar not null,
    protocol varchar not null,
    user_id varchar not null,
    item_id varchar not null,
    judge varchar not null,
    rating integer,                 -- 1..5 (null: the judge only votes like / no like)
    p_like double,                  -- the judge's P(rating >= 4) where it has a distribution (a vote: 0 or 1)
    liked boolean,                  -- rating >= 4, or the vote (never null: expectations/arena_judgments.json)
    primary key (run_id, fold, protocol, user_id, item_id, judge)
);

-- mean over test users of each metric, per recommender and judge
create table if not exists arena_metrics (
    run_id varchar not null,
    fold varchar not null,
    protocol varchar not null,
    recommender varchar not null,
    judge varchar not null,
    metric varchar not null,        -- ndcg@10, precision@5 (observed); like_rate@10, mean_rating (catalogue)
    value double not null,
    primary key (run_id, fold, protocol, recommender, judge, metric)
);

-- rank agreement of the recommenders' order under real and simulated gains (95% bootstrap over users)
create table if not exists arena_agreement (
    run_id varchar not null,
    fold varchar not null,
    protocol varchar not null,
    metric varchar not null,
    judge varchar not null,
    tau double, tau_lo double, tau_hi double,          -- Kendall tau-b
    rho double, rho_lo double, rho_hi double,          -- Spearman
    tau_judge_cross double,  -- noise ceiling: judge on half A vs real on half B (mean over splits)
    tau_real_cross double,   -- real on half A vs real on half B
    ceiling_ratio double,    -- tau_judge_cross / tau_real_cross
    primary key (run_id, fold, protocol, metric, judge)
);

-- positivity calibration on the held-out pairs: like-rate gap in points, ECE and Brier of P(like)
create table if not exists arena_calibration (
    run_id varchar not null,
    fold varchar not null,
    judge varchar not null,
    like_rate_gap double,    -- simulated minus real like rate, points
    like_rate double,
    real_like_rate double,
    ece double,
    brier double,
    n integer,
    primary key (run_id, fold, judge)
);

-- the reliability diagram's bins (P(like) equal-width bins)
create table if not exists arena_reliability (
    run_id varchar not null,
    fold varchar not null,
    judge varchar not null,
    bin integer not null,
    lower double, upper double,
    n integer,
    mean_p double,           -- mean P(like) in the bin
    like_rate double,        -- real like rate in the bin
    primary key (run_id, fold, judge, bin)
);
