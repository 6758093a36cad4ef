"""Training and evaluation of MIL models: tasks, losses, training, checkpoints, metrics."""
