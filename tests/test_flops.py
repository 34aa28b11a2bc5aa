"""FLOP accounting: active matmul parameters against the layer-by-layer formula, mask pairs
against a brute-force loop, and executed FLOPs against XLA's cost analysis."""
import pytest
from flax import nnx

import base
from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL
from mmpretrain.data.pipeline import make_batches
from mmpretrain.model import layers
from mmpretrain.model.moe import expert_count
from mmpretrain.scaling.flops import (active_matmul_params, step_flops, token_counts,
                                      train_flops_per_token, xla_step_flops)
from mmpretrain.tokenizers.visual import make_representation, patch_dim
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run, build_model
from mmpretrain.tokenizers.visual import row_spec


def dense_formula(c) -> int:
  m = c.model
  patch = patch_dim(make_representation(c).latent_grid, c.visual.patch_size)
  attention = 2 * m.d_model * m.num_heads * m.head_dim + 2 * m.d_model * m.num_kv_heads * m.head_dim
  ffn = 3 * m.d_model * m.mlp_dim
  heads = 2 * m.d_model * patch + m.d_model * m.vocab_size          # visual in/out, LM head
  time_embed = 256 * m.d_model + m.d_model * m.d_model
  return m.num_layers * (attention + ffn) + heads + time_embed


def test_dense_count_matches_the_formula_and_flops_add_attention():
  c = base.get_config()
  assert active_matmul_params(c) == dense_formula(c)
  m = c.model
  assert train_flops_per_token(c) == (6 * dense_formula(c) + 12 * m.num_layers * m.num_heads
                                      * m.head_dim * c.data.seq_len)


def test_modality_ffn_counts_one_ffn_per_token():
  c = base.get_config()
  c.model.modality_ffn = True
  assert active_matmul_params(c) == dense_formula(c)


def test_moe_counts_k_experts_and_the_router():
  c = base.get_config()
  m = c.model
  m.moe.update({"num_experts": 8, "experts_per_token": 2, "expert_mlp_dim": m.mlp_dim // 2,
                "granularity": 4, "first_dense_layers": 2, "shared_experts": "per_modality",
                "shared_mlp_dim": 128})
  moe_layers = m.num_layers - 2
  # k·G experts of hidden/G: the dense FFN's 3·d·mlp_dim; plus one shared expert per token
  # (text or vision, never both) and the router's d × E.
  extra = moe_layers * (3 * m.d_model * 128 + m.d_model * expert_count(m.moe))
  assert active_matmul_params(c) == dense_formula(c) + extra


def expected_used_by(path: tuple[str, ...]) -> str | None:
  """Which tokens multiply a parameter of the model below, written from attribute names
  (the code reads annotations; this is an independent statement of what they must say)."""
  names = set(path)
  if path[-1] == "embedding":
    return layers.LOOKUP
  if "experts" in names:
    return layers.ROUTED
  if names & {"vision_ffn", "shared_visual", "visual_in", "visual_out", "time_embed"}:
    return layers.VISUAL
  if names & {"lm_head", "shared"}:
    return layers.TEXT
  if "ffn" in names and path[path.index("ffn") + 1] in ("gate", "up", "down"):
    return layers.TEXT                  # a dense layer's FFN, twinned with vision_ffn here
  return None


@pytest.mark.parametrize("scan", [True, False])
def test_every_parameter_says_which_tokens_multiply_it(scan):
  c = base.get_config()
  c.model.scan_layers, c.model.modality_ffn, c.model.flow_head.width = scan, True, 64
  c.model.moe.update({"num_experts": 4, "experts_per_token": 1, "first_dense_layers": 1,
                      "shared_experts": "per_modality", "router": "sigmoid"})
  model = nnx.eval_shape(lambda: build_model(c, 0))
  seen = set()
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    path = tuple(map(str, path))
    expected = expected_used_by(path)
    assert param.get_metadata().get(layers.USED_BY) == expected, path
    seen.add(expected)
  assert seen == {None, layers.LOOKUP, layers.ROUTED, layers.TEXT, layers.VISUAL}


def text_and_visual_split(c, counts):
  """The per-modality model FLOPs written out by hand from the layer formula."""
  m = c.model
  patch = patch_dim(make_representation(c).latent_grid, c.visual.patch_size)
  decoder = m.num_layers * (2 * m.d_model * m.num_heads * m.head_dim
                            + 2 * m.d_model * m.num_kv_heads * m.head_dim
                            + 3 * m.d_model * m.mlp_dim)
  flow_head = 2 * m.d_model * patch + 256 * m.d_model + m.d_model * m.d_model
  pair = 12 * m.num_layers * m.num_heads * m.head_dim
  return (6 * counts.text * (decoder + m.d_model * m.vocab_size) + pair * counts.text_pairs,
          6 * counts.visual * (decoder + flow_head) + pair * counts.visual_pairs)


def test_step_flops_split_by_modality_with_masked_attention(config, tokenizer):
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  counts = token_counts(batch)
  # Brute force over the packed rows: a query attends earlier slots of its document and
  # the rest of its own visual block.
  pairs = {MODALITY_TEXT: 0, MODALITY_VISUAL: 0}
  for row in range(batch["tokens"].shape[0]):
    seg, blk, mod = batch["segment_ids"][row], batch["block_ids"][row], batch["modality"][row]
    for q in range(len(seg)):
      if mod[q] in pairs:
        pairs[mod[q]] += sum(seg[k] == seg[q] and (k <= q or (blk[q] > 0 and blk[k] == blk[q]))
                             for k in range(len(seg)))
  assert (counts.text_pairs, counts.visual_pairs) == (pairs[MODALITY_TEXT],
                                                      pairs[MODALITY_VISUAL])
  assert counts.text > 0 and counts.visual > 0
  flops = step_flops(config, counts)
  assert (flops.text, flops.visual) == pytest.approx(text_and_visual_split(config, counts))


@pytest.mark.parametrize("variant", ["dense", "modality_ffn", "moe", "remat"])
def test_executed_flops_match_xla_cost_analysis(config, tokenizer, variant):
  """The count of what the step runs is within 10% of XLA's cost analysis of the compiled
  step (layers unrolled: XLA counts a loop body once)."""
  config.model.scan_layers = False
  config.model.d_model, config.model.mlp_dim, config.model.num_layers = 128, 384, 3
  if variant == "modality_ffn":
    config.model.modality_ffn = True
  elif variant == "moe":
    config.model.moe.update({"num_experts": 8, "experts_per_token": 2, "expert_mlp_dim": 192,
                             "shared_experts": "per_modality", "shared_mlp_dim": 96})
  elif variant == "remat":
    config.model.remat = "full"
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  xla = xla_step_flops(trainer, trainer.init_state(0), batch)
  executed = step_flops(config, token_counts(batch)).executed
  assert executed == pytest.approx(xla, rel=0.10), (executed, xla)


def text_only(config):
  """`config` with rows of text alone: no frames, only the text stream."""
  config.data.max_frames = 0
  config.data.mixture = {stream: 1.0 if stream == "text" else 0.0
                         for stream in config.data.mixture}
  return config


def test_a_text_only_config_builds_no_visual_path():
  c = text_only(base.get_config())
  model = nnx.eval_shape(lambda: build_model(c, 0))
  names = {str(part) for path, _ in nnx.to_flat_state(nnx.state(model)) for part in path}
  assert not names & {"visual_in", "visual_out", "time_embed", "frame_positions"}, names
  m = c.model
  # The layers and the LM head only: a text-only transformer's count.
  attention = 2 * m.d_model * m.num_heads * m.head_dim + 2 * m.d_model * m.num_kv_heads * m.head_dim
  layer = attention + 3 * m.d_model * m.mlp_dim
  assert active_matmul_params(c) == m.num_layers * layer + m.d_model * m.vocab_size


@pytest.mark.slow
def test_a_text_only_step_runs_only_the_text_transformers_flops(config, tokenizer):
  """XLA's count of the compiled text-only step against the same model with a visual
  path fed text rows: the difference is the visual path's matmuls on every slot (input
  projection, flow head, timestep MLP), and the text-only step is what the FLOP count of
  a text transformer says."""
  config.model.scan_layers = False
  config.model.d_model, config.model.mlp_dim, config.model.num_layers = 128, 384, 2
  text_only(config)
  def step_flops_of(cfg):
    trainer = Trainer(Run(cfg), tokenizer.byte_lengths())
    batch = next(make_batches(cfg, tokenizer, row_spec(cfg)))
    return xla_step_flops(trainer, trainer.init_state(0), batch), batch
  alone, batch = step_flops_of(config)
  assert batch["frames"].shape[1] == 0
  with_vision = config.copy_and_resolve_references()
  with_vision.data.max_frames = 1
  visual, _ = step_flops_of(with_vision)
  m = config.model
  slots = batch["tokens"].size
  patch = patch_dim(make_representation(config).latent_grid, config.visual.patch_size)
  # The input projection and the timestep MLP's first layer read inputs that take no
  # gradient: forward and weight gradient, 4 FLOPs a weight; the others 6.
  first = m.d_model * patch + 256 * m.d_model
  rest = m.d_model * m.d_model + m.d_model * patch
  assert visual - alone == pytest.approx(slots * (4 * first + 6 * rest), rel=0.05), (visual, alone)
  executed = step_flops(config, token_counts(batch)).executed
  assert executed == pytest.approx(alone, rel=0.05), (executed, alone)
