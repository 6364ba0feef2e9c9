"""Generation (batched, continuously refilled) and the lm-eval harness on our own models."""
