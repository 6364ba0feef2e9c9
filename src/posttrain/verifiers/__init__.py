"""Verifiable rewards: answer extraction, instruction constraints, refusal detection, the reward registry."""
