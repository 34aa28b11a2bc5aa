"""Training: objective, optimizer, jitted step, loop, metrics."""
