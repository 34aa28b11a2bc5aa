"""The unified Transfusion transformer (Flax NNX)."""
