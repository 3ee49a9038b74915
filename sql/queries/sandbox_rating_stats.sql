select count(*) as n_ratings, count(distinct item_id) as n_items, avg(rating) as mean_rating,
       count(*) filter (where rating = 1) as r1, count(*) filter (where rating = 2) as r2,
       count(*) filter (where rating = 3) as r3, count(*) filter (where rating = 4) as r4,
       count(*) filter (where rating = 5) as r5
from sandbox_ratings where sandbox_id = $sandbox_id
