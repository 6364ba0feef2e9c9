"""Statistics over evaluations: paired significance tests between two models."""
