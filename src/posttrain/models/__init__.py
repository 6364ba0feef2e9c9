"""Model sources, chat templates, reward-model scoring and student pruning."""
