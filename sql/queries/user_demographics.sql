-- one line of demographics per user, as the LLM sees it
select
    user_id,
    concat_ws(', ',
        case when age is not null then age::varchar || ' years old' end,
        case upper(gender) when 'M' then 'male' when 'F' then 'female' else nullif(gender, '') end,
        nullif(occupation, ''),
        nullif(text, '')
    ) as demographics
from users
where dataset = $dataset and user_id in (select unnest($user_ids::varchar[]))
order by user_id
