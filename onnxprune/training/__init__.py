"""Retraining: data sources, the training loop with its hooks, and fine-tuning a pruned model."""
