-- simulated_ratings gains the model's distribution over 1..5 (files written before 2026-12-02 lack it)
alter table simulated_ratings add column if not exists rating_probs double[];
alter table simulated_ratings add column if not exists rating_probs_source varchar;
alter table simulated_ratings add column if not exists rating_probs_draws integer;
