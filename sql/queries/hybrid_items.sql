-- every item of a dataset with its genres (features of the calibrated hybrid, tasks/fidelity)
select item_id, genres from items where dataset = $dataset order by item_id
