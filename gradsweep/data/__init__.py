"""Datasets as tensors on the training device: where the images come from, how they are read
and cached, and the shuffled batches drawn from them (`load.load_data`, `Batches`)."""
