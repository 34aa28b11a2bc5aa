"""Text tokenizers and visual representations (frames <-> continuous latents)."""
