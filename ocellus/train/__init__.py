"""Training: stages as data, one readable loop, resumable checkpoints, recipes."""
