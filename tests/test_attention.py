"""Attention kernels: the einsum path (custom VJP), the dense XLA path, the chunked kernel
and the Pallas kernel (interpreted) over key ranges, all against float64 numpy softmax attention and its
analytic gradients, on block-causal masks with packed documents and grouped-query heads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmpretrain.model import attention, chunked_attention
from mmpretrain.model.masks import attention_mask, key_ranges
from mmpretrain.model.transformer import remat_policy

B, L, HEADS, DIM = 2, 24, 4, 8


def _ids():
  """Two packed documents per row, each with an image block, then padding."""
  segment = np.array([[1] * 10 + [2] * 12 + [0] * 2, [1] * 24], np.int32)
  block = np.zeros((B, L), np.int32)
  block[0, 3:7], block[0, 14:18] = 1, 2
  block[1, 5:9], block[1, 9:13] = 1, 2        # back-to-back frames
  return segment, block


def reference_attention(q, k, v, mask, d_out):
  """Float64 attention over `mask` [B, 1, L, L] and its gradients, written from the
  definition (keys and values grouped-query when they have fewer heads)."""
  q, k, v, d_out = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshd->bthd", probs, v)
  d_probs = np.einsum("bthd,bshd->bhts", d_out, v)
  d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True)) / np.sqrt(q.shape[-1])
  d_q = np.einsum("bhts,bshd->bthd", d_scores, k)
  d_k = np.einsum("bhts,bthd->bshd", d_scores, q)
  d_v = np.einsum("bhts,bthd->bshd", probs, d_out)
  fold = lambda g: g.reshape(*g.shape[:2], -1, groups, g.shape[-1]).sum(3)
  return out, d_q, fold(d_k), fold(d_v)


def _inputs(kv_heads, dtype, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [(B, L, HEADS, DIM), (B, L, kv_heads, DIM), (B, L, kv_heads, DIM), (B, L, HEADS, DIM)]
  return [jnp.asarray(rng.normal(size=s), dtype) for s in shapes]


def _visible(impl):
  """What a layer passes: the key ranges of whole rows."""
  del impl
  return key_ranges(*_ids())


# chunked/5: chunks that do not divide L (the padded path); chunked/8: three chunks, where
# the second query chunk of row 0 skips no key chunk and the third skips the first.
IMPLS = {"einsum": ("einsum", 512), "xla": ("xla", 512), "chunked/5": ("chunked", 5),
         "chunked/8": ("chunked", 8), "chunked/whole": ("chunked", L), "pallas/8": ("pallas", 8)}


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_float32_matches_float64reference_attention(name, kv_heads):
  impl, chunk = IMPLS[name]
  q, k, v, d_out = _inputs(kv_heads, jnp.float32)
  mask = attention_mask(*_ids())
  out, vjp = jax.vjp(lambda *a: attention.attend(*a, _visible(impl), impl, chunk), q, k, v)
  got = [out, *vjp(d_out)]
  want = reference_attention(*(np.asarray(a, np.float64) for a in (q, k, v)), np.asarray(mask),
                    np.asarray(d_out, np.float64))
  for name, g, w in zip(["out", "d_q", "d_k", "d_v"], got, want):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bfloat16_kernels_are_as_close_as_the_library():
  # bf16 rounds inputs, scores, probabilities and outputs; no kernel may be much worse
  # than jax.nn.dot_product_attention (f32 scores) on the same bf16 inputs (errors
  # against float64).
  q, k, v, d_out = _inputs(2, jnp.bfloat16, seed=1)
  mask = attention_mask(*_ids())
  want = reference_attention(*(np.asarray(a.astype(jnp.float32), np.float64) for a in (q, k, v)),
                    np.asarray(mask), np.asarray(d_out.astype(jnp.float32), np.float64))
  library = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask)
  kernels = {impl: (lambda *a, impl=impl: attention.attend(*a, key_ranges(*_ids()), impl, 8))
             for impl in ("einsum", "xla", "chunked", "pallas")}
  errors = {}
  for name, kernel in {"library": library, **kernels}.items():
    out, vjp = jax.vjp(kernel, q, k, v)
    got = [out, *vjp(d_out)]
    assert all(g.dtype == jnp.bfloat16 for g in got), name
    errors[name] = [np.abs(np.asarray(g.astype(jnp.float32), np.float64) - w).max()
                    / np.abs(w).max() for g, w in zip(got, want)]
  for name in kernels:
    assert max(errors[name]) < 0.02, errors
    assert all(e <= 2 * x + 1e-3 for e, x in zip(errors[name], errors["library"])), errors


def test_auto_is_einsum_on_cpu_chunked_on_accelerators_and_unknown_names_are_refused():
  assert attention.resolve("auto") == "einsum"       # the test suite runs on CPU
  assert attention.resolve("auto", "tpu") == attention.resolve("auto", "gpu") == "chunked"
  assert attention.for_cache("auto") == "einsum"
  assert attention.for_cache("chunked") == "xla"     # a KV cache's unwritten slots
  assert attention.for_cache("pallas") == "xla"
  assert attention.resolve("cudnn") == "cudnn"
  with pytest.raises(ValueError, match="attention_impl"):
    attention.resolve("flash")
  with pytest.raises(ValueError, match="TPU kernel"):
    attention.resolve("pallas", "gpu")


def test_chunked_skips_key_chunks_no_query_sees_and_stays_exact_on_long_packed_rows():
  # 3 documents of text and images in a 96-token row, chunks of 16: most query chunks see
  # only a few key chunks. Values and gradients against float64.
  rng = np.random.default_rng(3)
  length, heads, dim = 96, 2, 8
  segment = np.repeat(np.array([1, 2, 3, 0]), [40, 30, 20, 6])[None].astype(np.int32)
  block = np.zeros((1, length), np.int32)
  block[0, 8:24], block[0, 45:61], block[0, 72:80] = 1, 2, 3
  q, k, v, d_out = (jnp.asarray(rng.normal(size=(1, length, heads, dim)), jnp.float32)
                    for _ in range(4))
  out, vjp = jax.vjp(lambda *a: attention.attend(*a, key_ranges(segment, block), "chunked", 16),
                     q, k, v)
  want = reference_attention(*(np.asarray(a, np.float64) for a in (q, k, v)),
                    np.asarray(attention_mask(segment, block)), np.asarray(d_out, np.float64))
  for name, g, w in zip(["out", "d_q", "d_k", "d_v"], [out, *vjp(d_out)], want):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("keep", [False, True])
def test_remat_keeps_the_chunked_kernels_residuals_rather_than_running_it_again(keep):
  """Under a remat policy the kernel's backward needs its forward's output and
  log-sum-exp: kept by name (model.remat_keep_attention), the backward pass runs no second
  forward (the forward's two loops and the backward's one, not five), with the same
  gradients against float64."""
  q, k, v, _ = _inputs(2, jnp.float32, seed=4)
  names = (chunked_attention.RESIDUALS,) if keep else ()
  attend = jax.checkpoint(lambda *a: attention.attend(*a, _visible("chunked"), "chunked", 8),
                          policy=remat_policy("dots_no_batch", names))
  # Squared, so the backward reads the output, as the rest of a layer does.
  grads = jax.grad(lambda *a: jnp.sum(jnp.square(attend(*a))) / 2, argnums=(0, 1, 2))
  assert str(jax.make_jaxpr(grads)(q, k, v)).count("while[") == (3 if keep else 5)
  q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
  mask = np.asarray(attention_mask(*_ids()))
  out = reference_attention(q64, k64, v64, mask, np.zeros(q.shape))[0]
  want = reference_attention(q64, k64, v64, mask, out)[1:]
  for name, g, w in zip(["d_q", "d_k", "d_v"], grads(q, k, v), want):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-4, atol=1e-5, err_msg=name)
