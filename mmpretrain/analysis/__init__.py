"""Post-hoc analyses of trained runs (expert specialization)."""
