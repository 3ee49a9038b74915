select source from datasets where dataset = $dataset
