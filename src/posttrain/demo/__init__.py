"""The demo world: a seeded, deterministic corpus in which every stage moves a number."""
