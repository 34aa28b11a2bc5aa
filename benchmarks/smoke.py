"""`--smoke`, shared by every benchmark: the same code at tiny shapes for one step, so the
test suite proves each script still runs and prints its JSON line (the figures then mean
nothing)."""
import copy

from mmpretrain.config import validate

HELP = "tiny shapes, one step: checks that the script runs (its figures mean nothing)"


def add_flag(parser) -> None:
  parser.add_argument("--smoke", action="store_true", help=HELP)


def tiny(config):
  """`config` at a size that compiles and steps in seconds; what it exercises (MoE and its
  granularity, modalities, representation, dtype) is kept."""
  c = copy.deepcopy(config)
  m = c.model
  m.d_model, m.num_layers, m.mlp_dim, m.head_dim = 64, 2, 128, 32
  m.num_heads = m.num_kv_heads = 2
  c.data.seq_len, c.data.batch_size = 128, 2
  c.data.max_frames = min(c.data.max_frames, 2)
  c.data.tokenizer.vocab_size = m.vocab_size = 512
  if m.moe.num_experts:
    m.moe.expert_mlp_dim, m.moe.capacity_group_rows = 64, 2
  e = c.encoder
  e.image = dict(e.image, width=32, depth=1, num_heads=2, mlp_dim=64)
  c.rae.decoder = dict(c.rae.decoder, width=32, depth=1, num_heads=2, mlp_dim=64)
  c.diffusion.sample_steps = 2
  if "bench" in c:
    c.bench = {"text_tokens_per_row": min(c.bench["text_tokens_per_row"], 64),
               "images_per_row": min(c.bench["images_per_row"], 1)}
  return validate(c)
