-- every profile version per (run, fold, user) with how it changed from the previous version:
-- words_delta = change in word count, new_words / dropped_words = distinct words (lower case)
-- that appear / disappear; all null for the first version.
create or replace view profile_evolution as
with versions as (
    select
        run_id, fold, user_id, version, stage, text,
        len(string_split_regex(trim(text), '\s+')) as words,
        list_distinct(list_filter(string_split_regex(lower(text), '[^a-z0-9'']+'), lambda w: w <> '')) as vocab
    from profiles
),
with_previous as (
    select
        *,
        lag(words) over (partition by run_id, fold, user_id order by version) as previous_words,
        lag(vocab) over (partition by run_id, fold, user_id order by version) as previous_vocab
    from versions
),
final as (
    select
        run_id, fold, user_id, version, stage, words,
        words - previous_words as words_delta,
        case when previous_vocab is not null
             then len(list_filter(vocab, lambda w: not list_contains(previous_vocab, w))) end as new_words,
        case when previous_vocab is not null
             then len(list_filter(previous_vocab, lambda w: not list_contains(vocab, w))) end as dropped_words,
        text
    from with_previous
)
select * from final
