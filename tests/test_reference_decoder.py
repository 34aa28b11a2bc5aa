"""The decoder against outside references, so a wrong convention cannot pass unnoticed:

- an independent float64 NumPy forward of the whole model (RMSNorm, rotate-half RoPE,
  grouped-query attention under the packed mask written as a loop over query/key pairs,
  SwiGLU, the visual input with its timestep and frame-position embeddings, the LM head
  or the tied embedding, the flow read-out) on rows of two documents with an image each;
- transformers' Llama with the same weights, on text.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from mmpretrain.batch import MODALITY_TEXT, MODALITY_VISUAL
from mmpretrain.model.transformer import ModelInputs, Transfusion

from test_model import model_config

PATCH, FRAME_TOKENS = 8, 4


def packed_inputs(seed=0, rows=2):
  """Rows of two documents: text, a 4-token image, text; positions restart per document."""
  rng = np.random.default_rng(seed)
  doc = [MODALITY_TEXT] * 3 + [MODALITY_VISUAL] * FRAME_TOKENS + [MODALITY_TEXT] * 2
  modality = np.array([doc + doc[:7]] * rows, np.int32)
  segment = np.array([[1] * len(doc) + [2] * 7] * rows, np.int32)
  positions = np.array([list(range(len(doc))) + list(range(7))] * rows, np.int32)
  block = np.zeros_like(modality)
  block[:, 3:7], block[:, len(doc) + 3:len(doc) + 7] = 1, 2
  visual = modality == MODALITY_VISUAL
  return ModelInputs(
      tokens=jnp.asarray(np.where(visual, 0, rng.integers(0, 97, modality.shape)), jnp.int32),
      modality=jnp.asarray(modality), segment_ids=jnp.asarray(segment),
      block_ids=jnp.asarray(block), positions=jnp.asarray(positions),
      visual_latents=jnp.asarray(np.where(visual[..., None],
                                          rng.normal(size=(*modality.shape, PATCH)), 0.0),
                                 jnp.float32),
      timesteps=jnp.asarray(np.where(visual, rng.uniform(size=modality.shape), 0.0),
                            jnp.float32))


def f64(x):
  return np.asarray(x[...], np.float64)


def rms_norm(x, norm, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * f64(norm.scale)


def rope(x, positions, theta):
  """x [L, heads, D]: pairs (i, i + D/2) rotated by position · theta^(-2i/D)."""
  half = x.shape[-1] // 2
  out = np.empty_like(x)
  for i in range(half):
    angle = positions * theta ** (-2.0 * i / x.shape[-1])
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    out[..., i] = x[..., i] * c - x[..., i + half] * s
    out[..., i + half] = x[..., i + half] * c + x[..., i] * s
  return out


def allowed(segment, block, i, j):
  return segment[i] == segment[j] and (j <= i or (block[i] == block[j] and block[i] > 0))


def attention(block, x, segment, blocks, positions, cfg):
  a = block.attn
  q = np.einsum("ld,dhk->lhk", x, f64(a.q.kernel))
  k = np.einsum("ld,dhk->lhk", x, f64(a.k.kernel))
  v = np.einsum("ld,dhk->lhk", x, f64(a.v.kernel))
  q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
  length, heads, dim = q.shape
  group = heads // k.shape[1]
  out = np.zeros_like(q)
  for h in range(heads):
    for i in range(length):
      keys = [j for j in range(length) if allowed(segment, blocks, i, j)]
      scores = np.array([q[i, h] @ k[j, h // group] for j in keys]) / math.sqrt(dim)
      p = np.exp(scores - scores.max())
      out[i, h] = (p / p.sum()) @ v[keys, h // group]
  return np.einsum("lhk,hkd->ld", out, f64(a.o.kernel))


def swiglu(ffn, x):
  gate = x @ f64(ffn.gate.kernel)
  return (gate / (1 + np.exp(-gate)) * (x @ f64(ffn.up.kernel))) @ f64(ffn.down.kernel)


def linear(layer, x):
  return x @ f64(layer.kernel) + f64(layer.bias)


def timestep_embedding(model, t):
  half = model.time_embed.freq_dim // 2
  freqs = np.exp(-math.log(10_000.0) * np.arange(half) / half)
  args = 1000.0 * t[:, None] * freqs
  features = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
  hidden = linear(model.time_embed.fc1, features)
  return linear(model.time_embed.fc2, hidden / (1 + np.exp(-hidden)))


def numpy_forward(model: Transfusion, inputs: ModelInputs, cfg):
  """Text logits [B, L, V] and the flow read-out [B, L, patch], float64, row by row."""
  logits, flow = [], []
  for b in range(inputs.tokens.shape[0]):
    segment, blocks = np.asarray(inputs.segment_ids[b]), np.asarray(inputs.block_ids[b])
    positions = np.asarray(inputs.positions[b], np.float64)
    visual = np.asarray(inputs.modality[b]) == MODALITY_VISUAL
    time_h = timestep_embedding(model, np.asarray(inputs.timesteps[b], np.float64))
    first_of_block = {k: positions[blocks == k].min() for k in set(blocks[visual])}
    index_in_frame = [int(positions[i] - first_of_block[k]) if visual[i] else 0
                      for i, k in enumerate(blocks)]
    visual_h = (linear(model.visual_in, np.asarray(inputs.visual_latents[b], np.float64))
                + time_h + f64(model.frame_positions.embedding)[index_in_frame])
    x = np.where(visual[:, None], visual_h,
                 f64(model.embed.embedding)[np.asarray(inputs.tokens[b])])
    for block in model.decoder.runs[0].blocks:
      x = x + attention(block, rms_norm(x, block.attn_norm, cfg.norm_eps), segment, blocks,
                        positions, cfg)
      x = x + swiglu(block.ffn, rms_norm(x, block.ffn_norm, cfg.norm_eps))
    x = rms_norm(x, model.final_norm, cfg.norm_eps)
    head = f64(model.embed.embedding).T if cfg.tie_embeddings else f64(model.lm_head.kernel)
    logits.append(x @ head)
    flow.append(linear(model.visual_out, x))
  return np.stack(logits), np.stack(flow)


def unrolled_model(**overrides):
  cfg = model_config(scan_layers=False, **overrides)
  return Transfusion(cfg, PATCH, tokens_per_frame=FRAME_TOKENS, rngs=nnx.Rngs(3)), cfg


@pytest.mark.parametrize("overrides", [
    {"attention_impl": "einsum"}, {"attention_impl": "xla"},
    {"attention_impl": "einsum", "tie_embeddings": True}])
def test_the_model_equals_a_float64_numpy_forward(overrides):
  model, cfg = unrolled_model(**overrides)
  inputs = packed_inputs()
  logits, flow, _ = model(inputs)
  want_logits, want_flow = numpy_forward(model, inputs, cfg)
  scale = np.abs(want_logits).max()
  np.testing.assert_allclose(np.asarray(logits), want_logits, atol=2e-5 * scale, rtol=0)
  visual = np.asarray(inputs.modality) == MODALITY_VISUAL
  np.testing.assert_allclose(np.asarray(flow)[visual], want_flow[visual],
                             atol=2e-5 * np.abs(want_flow).max(), rtol=0)


def test_tied_logits_are_the_final_hidden_state_times_the_embedding():
  model, _ = unrolled_model(tie_embeddings=True)
  inputs = packed_inputs(seed=1)
  hidden = {}
  final_norm = model.final_norm
  class Spy(nnx.Module):                  # records the normed hidden state the head reads
    def __call__(self, x):
      hidden["h"] = final_norm(x)
      return hidden["h"]
  model.final_norm = Spy()
  logits = np.asarray(model(inputs)[0])
  h = np.asarray(hidden["h"], np.float64).reshape(*logits.shape[:2], -1)
  want = h @ f64(model.embed.embedding).T
  np.testing.assert_allclose(logits, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def llama_with_weights(model: Transfusion, cfg) -> transformers.LlamaForCausalLM:
  config = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, max_position_embeddings=64, tie_word_embeddings=False,
      attention_bias=False, mlp_bias=False, attn_implementation="eager")
  llama = transformers.LlamaForCausalLM(config).double().eval()

  def put(param, value):
    param.data = torch.from_numpy(np.ascontiguousarray(value))
  put(llama.model.embed_tokens.weight, f64(model.embed.embedding))
  for layer, block in zip(llama.model.layers, model.decoder.runs[0].blocks):
    a, d = block.attn, cfg.d_model
    put(layer.self_attn.q_proj.weight, f64(a.q.kernel).reshape(d, -1).T)
    put(layer.self_attn.k_proj.weight, f64(a.k.kernel).reshape(d, -1).T)
    put(layer.self_attn.v_proj.weight, f64(a.v.kernel).reshape(d, -1).T)
    put(layer.self_attn.o_proj.weight, f64(a.o.kernel).reshape(-1, d).T)
    put(layer.mlp.gate_proj.weight, f64(block.ffn.gate.kernel).T)
    put(layer.mlp.up_proj.weight, f64(block.ffn.up.kernel).T)
    put(layer.mlp.down_proj.weight, f64(block.ffn.down.kernel).T)
    put(layer.input_layernorm.weight, f64(block.attn_norm.scale))
    put(layer.post_attention_layernorm.weight, f64(block.ffn_norm.scale))
  put(llama.model.norm.weight, f64(model.final_norm.scale))
  put(llama.lm_head.weight, f64(model.lm_head.kernel).T)
  return llama


def test_text_logits_equal_transformers_llama_with_the_same_weights():
  model, cfg = unrolled_model(attention_impl="einsum")
  tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 20))
  length = tokens.shape[1]
  inputs = ModelInputs(
      tokens=jnp.asarray(tokens, jnp.int32),
      modality=jnp.full(tokens.shape, MODALITY_TEXT, jnp.int32),
      segment_ids=jnp.ones(tokens.shape, jnp.int32), block_ids=jnp.zeros(tokens.shape, jnp.int32),
      positions=jnp.broadcast_to(jnp.arange(length), tokens.shape),
      visual_latents=jnp.zeros((*tokens.shape, PATCH), jnp.float32),
      timesteps=jnp.zeros(tokens.shape, jnp.float32))
  logits = np.asarray(model(inputs)[0])
  with torch.no_grad():
    want = llama_with_weights(model, cfg)(torch.from_numpy(tokens)).logits.numpy()
  np.testing.assert_allclose(logits, want, atol=2e-5 * np.abs(want).max(), rtol=0)
