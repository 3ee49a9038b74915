-- per rated pair with the model's distribution over 1..5 (simulated_ratings.rating_probs, from token
-- logprobs or from draws; pairs without one are left out): the expected rating, the probability the
-- model gave its own answer and the real rating, the entropy in bits (0: certain; log2(5) = 2.32:
-- uniform), and where the distribution came from (source: logprobs | samples, draws: how many).
create or replace view rating_distributions as
with pairs as (
    select run_id, fold, user_id, item_id, simulated, real, rating_probs as p,
           rating_probs_source as source, rating_probs_draws as draws
    from stg_simulated_pairs
    where status = 'ok' and rating_probs is not null
),
final as (
    select
        run_id, fold, user_id, item_id, simulated, real,
        p[1] as p1, p[2] as p2, p[3] as p3, p[4] as p4, p[5] as p5,
        p[1] + 2 * p[2] + 3 * p[3] + 4 * p[4] + 5 * p[5] as expected,
        p[simulated] as p_simulated,
        p[real] as p_real,
        -(coalesce(p[1] * log2(nullif(p[1], 0)), 0) + coalesce(p[2] * log2(nullif(p[2], 0)), 0)
          + coalesce(p[3] * log2(nullif(p[3], 0)), 0) + coalesce(p[4] * log2(nullif(p[4], 0)), 0)
          + coalesce(p[5] * log2(nullif(p[5], 0)), 0)) as entropy_bits,
        source, draws
    from pairs
)
select * from final
