-- the items the agents watched most, with their mean sandbox rating
select r.item_id, i.title, count(*) as n, avg(r.rating) as mean_rating
from sandbox_ratings r
join sandbox_runs s using (sandbox_id)
left join items i on i.dataset = s.dataset and i.item_id = r.item_id
where r.sandbox_id = $sandbox_id
group by r.item_id, i.title order by n desc, mean_rating desc, r.item_id limit 10
