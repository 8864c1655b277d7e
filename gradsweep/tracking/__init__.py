"""Weights & Biases: the tracker a run logs to, the writer process that owns the wandb run,
and a reader of what a run's `.wandb` file holds."""
