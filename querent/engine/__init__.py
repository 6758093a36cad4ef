"""Training and evaluation of MIL models: losses, metrics, the training loop, evaluation."""
