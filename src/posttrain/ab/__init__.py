"""Human A/B comparison of two models: their answers to the same prompts side by side, blind and
in random order, on a local web page; votes kept in SQLite, reported as a win rate with its
interval and exported as preference pairs (`posttrain ab serve | report | export`)."""
