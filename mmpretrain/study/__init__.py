"""The paper's experiments as data: each a figure over runs that differ in one thing
(registry), the runs it takes at a scale (plan), and its figure and table from their
results (report)."""
