"""About 1B parameters for accelerator throughput and MFU (benchmarks/device_check.sh):
d_model 2048, 16 layers, 16 heads of 128, SwiGLU 5632, vocab 32000, sequence 2048,
batch 8, bf16 compute, scanned layers with full remat.

  python benchmarks/train_step.py --config=configs/bench/dense_1b.py --bf16_only
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import base  # pylint: disable=wrong-import-position


def get_config(arg=None):
  c = base.get_config(arg)
  c.data.seq_len, c.data.batch_size = 2048, 8
  c.data.tokenizer.vocab_size = 32000
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = 2048, 16, 5632
  c.model.num_heads = c.model.num_kv_heads = 16
  c.model.head_dim = 128
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.train.num_steps = 100
  c.optimizer.warmup_steps = 10
  c.bench = {"text_tokens_per_row": 2048, "images_per_row": 0}
  return c
