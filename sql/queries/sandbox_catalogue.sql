select item_id, title, year, genres, text from items where dataset = $dataset order by item_id
