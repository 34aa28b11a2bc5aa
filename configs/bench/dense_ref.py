"""Reference dense shape for throughput/MFU (benchmarks/train_step.py).

d_model 512, 8 layers, 8 heads of 64, SwiGLU 1536, vocab 32000, RMSNorm, RoPE,
sequence 512, batch 8, float32, AdamW. Every row is one 512-token text document.

  python benchmarks/train_step.py --config=configs/bench/dense_ref.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import base  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = base.get_config(arg)
  c.data.seq_len, c.data.batch_size = 512, 8
  c.data.tokenizer.vocab_size = 32000
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 512, 8, 1536
  c.model.num_heads = c.model.num_kv_heads = 8
  c.model.head_dim = 64
  c.model.dtype = "float32"
  # Unrolled: under scan, XLA:CPU copies every layer's saved activations into and out of
  # stacked buffers, which costs throughput (docs/benchmarks.md has the figures). Eight
  # layers compile in seconds either way.
  c.model.scan_layers = False
  c.train.num_steps = 100
  c.optimizer.warmup_steps = 10
  # The benchmark's synthetic rows: text tokens and images of 64 latent tokens per row.
  c.bench = {"text_tokens_per_row": 512, "images_per_row": 0}
  return c
