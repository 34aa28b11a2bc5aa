"""Mixture-of-Transformers blocks against a float64 loop in which every token is normed,
projected and fed forward by its own modality's weights while attending over the whole
row; and the FLOP count charging each token only its own modality's weights."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import base
from mmpretrain.batch import TOKEN_KINDS
from mmpretrain.model.transformer import DecoderBlock
from mmpretrain.scaling import flops

D, HEADS, KV_HEADS, HEAD_DIM, MLP = 32, 4, 2, 8, 48
ROWS, LENGTH, EPS, THETA = 2, 10, 1e-6, 10_000.0


def model_config(**overrides):
  cfg = base.get_config("runlocal").model
  cfg.update({"d_model": D, "num_heads": HEADS, "num_kv_heads": KV_HEADS, "head_dim": HEAD_DIM,
              "mlp_dim": MLP, "dtype": "float32", "qk_norm": True, "norm_eps": EPS,
              "rope_theta": THETA, "attention_impl": "einsum", "num_layers": 2,
              "mot": True, "modality_ffn_impl": "select", **overrides})
  return cfg


def mot_block(seed: int = 0) -> DecoderBlock:
  """A MoT block whose norm scales are random, so that the modalities' norms differ."""
  block = DecoderBlock(model_config(), moe=False, rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  for path, param in nnx.to_flat_state(nnx.state(block, nnx.Param)):
    if path[-1] == "scale":
      param.set_value(jnp.asarray(rng.uniform(0.5, 1.5, param.shape), jnp.float32))
  return block


def f64(module, *path):
  for name in path:
    module = getattr(module, name)
  return np.asarray(module[...], np.float64)


def rms(x, scale):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + EPS) * scale


def rope(x, position):
  """x [heads, head_dim] of one token, rotated by its position (rotate-half form)."""
  half = x.shape[-1] // 2
  angles = position * THETA ** (-np.arange(half) / half)
  x1, x2 = x[:, :half], x[:, half:]
  return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles),
                         x2 * np.cos(angles) + x1 * np.sin(angles)], -1)


def reference_block(block, x, positions, visible, visual):
  """The block in float64, token by token: x [B, L, d]; visible [B, L, L]; visual [B, L]."""
  def parts(modality: bool):
    attention = block.attn.visual if modality else block.attn.text
    ffn = block.vision_ffn if modality else block.ffn
    norm = "visual" if modality else "text"
    return {"attn_norm": f64(block.attn_norm, norm, "scale"),
            "ffn_norm": f64(block.ffn_norm, norm, "scale"),
            **{name: f64(attention, name, "kernel") for name in "qkvo"},
            "q_norm": f64(attention, "q_norm", "scale"),
            "k_norm": f64(attention, "k_norm", "scale"),
            **{name: f64(ffn, name, "kernel") for name in ("gate", "up", "down")}}
  own = {False: parts(False), True: parts(True)}
  out = np.empty_like(x)
  for b in range(ROWS):
    q, k, v = [], [], []
    for t in range(LENGTH):
      p = own[bool(visual[b, t])]
      h = rms(x[b, t], p["attn_norm"])
      q.append(rope(rms(np.einsum("d,dhk->hk", h, p["q"]), p["q_norm"]), positions[b, t]))
      k.append(rope(rms(np.einsum("d,dhk->hk", h, p["k"]), p["k_norm"]), positions[b, t]))
      v.append(np.einsum("d,dhk->hk", h, p["v"]))
    k = np.repeat(np.stack(k), HEADS // KV_HEADS, axis=1)      # [L, heads, head_dim]
    v = np.repeat(np.stack(v), HEADS // KV_HEADS, axis=1)
    for t in range(LENGTH):
      p = own[bool(visual[b, t])]
      scores = np.einsum("hk,shk->hs", q[t], k) / np.sqrt(HEAD_DIM)
      scores = np.where(visible[b, t], scores, -np.inf)
      weights = np.exp(scores - scores.max(-1, keepdims=True))
      mixed = np.einsum("hs,shk->hk", weights / weights.sum(-1, keepdims=True), v)
      y = x[b, t] + np.einsum("hk,hkd->d", mixed, p["o"])
      h = rms(y, p["ffn_norm"])
      gate, up = h @ p["gate"], h @ p["up"]
      out[b, t] = y + (gate / (1 + np.exp(-gate)) * up) @ p["down"]
  return out


def block_inputs(seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(ROWS, LENGTH, D))
  positions = np.tile(np.arange(LENGTH), (ROWS, 1)) + rng.integers(0, 5, (ROWS, 1))
  visual = np.zeros((ROWS, LENGTH), bool)
  visual[0, 3:7] = visual[1, 1:4] = True
  visual[1, 6:] = True
  # Causal, with each row's visual run seeing itself whole (as an image block does).
  visible = np.tril(np.ones((LENGTH, LENGTH), bool))[None].repeat(ROWS, 0)
  visible[0, 3:7, 3:7] = visible[1, 1:4, 1:4] = visible[1, 6:, 6:] = True
  kind = np.where(visual, TOKEN_KINDS.index("visual_generation"), TOKEN_KINDS.index("text"))
  kind[1, 1:4] = TOKEN_KINDS.index("visual_understanding")
  return x, positions, visible, visual, kind


def test_each_token_goes_through_its_own_modalitys_block_and_attends_to_all():
  block = mot_block()
  x, positions, visible, visual, kind = block_inputs()
  got, _ = block(jnp.asarray(x.reshape(-1, D), jnp.float32), jnp.asarray(positions),
                 jnp.asarray(visible[:, None]), jnp.asarray(kind.reshape(-1)))
  want = reference_block(block, x, positions, visible, visual)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=2e-5, atol=2e-5)

  # The modalities' weights really differ in the result: with the visual parts' weights
  # set to the text ones, every visual token's output changes and no text token's does
  # before the first visual token is attended to.
  merged = mot_block()
  for name in ("attn_norm", "ffn_norm"):
    nnx.update(getattr(merged, name).visual, nnx.state(getattr(merged, name).text))
  nnx.update(merged.attn.visual, nnx.state(merged.attn.text))
  nnx.update(merged.vision_ffn, nnx.state(merged.ffn))
  shared, _ = merged(jnp.asarray(x.reshape(-1, D), jnp.float32), jnp.asarray(positions),
                     jnp.asarray(visible[:, None]), jnp.asarray(kind.reshape(-1)))
  changed = ~np.isclose(np.asarray(shared).reshape(want.shape), want, atol=1e-4).all(-1)
  assert changed[visual].all()
  assert not changed[0, :3].any()


def test_the_gradient_of_a_modality_s_weights_comes_from_its_own_tokens_alone():
  block = mot_block()
  x, positions, visible, visual, kind = block_inputs()
  only_text = np.where(visual, 0.0, 1.0).reshape(-1, 1)

  def loss(block):
    out, _ = block(jnp.asarray(x.reshape(-1, D), jnp.float32), jnp.asarray(positions),
                   jnp.asarray(visible[:, None]), jnp.asarray(kind.reshape(-1)))
    return jnp.sum(out * only_text)           # text tokens' outputs only
  grads = nnx.grad(loss)(block)
  # Text outputs read visual tokens' keys and values, so the visual k/v projections get a
  # gradient; the visual q, o, FFN and FFN norm touch visual outputs alone.
  for leaf in jax.tree.leaves(nnx.state(grads.attn.visual.q)) + jax.tree.leaves(
      nnx.state(grads.attn.visual.o)) + jax.tree.leaves(nnx.state(grads.vision_ffn)) + \
      jax.tree.leaves(nnx.state(grads.ffn_norm.visual)):
    assert not np.asarray(leaf).any()
  assert np.asarray(grads.attn.visual.k.kernel[...]).any()
  assert np.asarray(grads.attn.text.q.kernel[...]).any()


def test_flops_charge_each_token_its_own_modality_s_weights():
  """A MoT model's active matmul parameters per token equal a shared model's: the twins
  are counted once per modality, while both are executed (the select form)."""
  def config(mot: bool):
    c = base.get_config("runlocal")
    c.model.mot = mot
    return c
  shared, mot = flops.matmul_params(config(False)), flops.matmul_params(config(True))
  assert mot.text_decoder == shared.text_decoder
  assert mot.visual_decoder == shared.visual_decoder
  attention = config(False).model
  projections = attention.d_model * attention.head_dim * (
      2 * attention.num_heads + 2 * attention.num_kv_heads)
  ffn = 3 * attention.d_model * attention.mlp_dim
  assert mot.decoder_executed - shared.decoder_executed == attention.num_layers * (
      projections + ffn)
