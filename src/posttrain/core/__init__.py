"""Plumbing every stage shares: manifests, lineage, resumable checkpoints, preemption."""
