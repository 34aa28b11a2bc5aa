"""MoE layer against a dense per-token float64 loop: both dispatches, drops, routers, losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import base
from mmpretrain import sharding
from mmpretrain.batch import TOKEN_KINDS
from mmpretrain.model import moe as moe_lib
from mmpretrain.model.moe import capacity as moe_capacity
from mmpretrain.model.moe import router as moe_router
from mmpretrain.model import row_ops
from mmpretrain.model import transformer

ROWS, LENGTH, D = 2, 12, 16
T = ROWS * LENGTH
TILED = 2 * 128        # a width whose rows the row-gather dispatch keeps as [2, 128] tiles


def moe_config(d=D, **overrides):
  c = base.get_config("runlocal").model
  c.d_model, c.mlp_dim, c.num_layers = d, 32, 2
  c.moe.num_experts, c.moe.experts_per_token = 4, 2
  for key, value in overrides.items():
    c.moe[key] = value
  return c


def inputs(seed=0, masked=0, d=D):
  """x [T, d] and token kinds (0 text, 1 clean visual, 2 noisy visual); the last `masked`
  tokens are padding (-1)."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(T, d)), jnp.float32)
  kind = np.where(np.arange(T) < T - masked, rng.integers(0, 3, T), -1)
  return x, jnp.asarray(kind, jnp.int32)


def f64(a):
  return np.asarray(a, np.float64)


def swiglu(x, gate, up, down):
  h = x @ gate
  return ((h / (1 + np.exp(-h))) * (x @ up)) @ down


def reference_routing(layer, x, kind, capacity=None, group=LENGTH):
  """(chosen experts [T, k], combine weights [T, k], kept [T, k] bool) in float64.

  With `capacity`, inside each group of `group` tokens an expert takes assignments in
  choice-major order (all first choices, then second choices, each in token order) until
  it holds `capacity`; the rest drop. Padding tokens take no slot.
  """
  logits = f64(x) @ f64(layer.router.kernel[...])
  k = layer.router.k
  if layer.router.kind == "softmax":
    scores = np.exp(logits - logits.max(-1, keepdims=True))
    scores /= scores.sum(-1, keepdims=True)
    ranking = scores
  else:
    scores = 1 / (1 + np.exp(-logits))
    ranking = scores + f64(layer.router.bias[...])
  chosen = np.argsort(-ranking, axis=-1, kind="stable")[:, :k]
  weights = np.take_along_axis(scores, chosen, -1)
  if layer.router.renormalize:
    weights /= weights.sum(-1, keepdims=True)
  kept = np.zeros(chosen.shape, bool)
  for start in range(0, len(x), group):
    used = np.zeros(layer.router.num_experts, int)
    for choice in range(k):
      for t in range(start, start + group):
        e = chosen[t, choice]
        if kind[t] < 0 or capacity is not None and used[e] >= capacity:
          continue
        used[e] += 1
        kept[t, choice] = True
  return chosen, weights, kept


def dense_reference(layer, x, kind, capacity=None, group=LENGTH):
  """Per token: Σ over its kept experts (reference_routing) of weight · expert(x), + shared
  experts. Returns the output and the drop rate."""
  chosen, weights, kept = reference_routing(layer, x, kind, capacity, group)
  return expert_sum(layer, x, chosen, weights, kept, kind), 1 - kept.sum() / kept.size


def expert_sum(layer, x, chosen, weights, kept, kind):
  """Σ over the kept (token, choice) pairs of weight · expert(x), + shared experts."""
  x = f64(x)
  gate, up, down = (f64(w[...]) for w in (layer.experts.gate, layer.experts.up,
                                          layer.experts.down))
  out = np.zeros_like(x)
  for t, choice in zip(*np.nonzero(kept)):
    e = chosen[t, choice]
    out[t] += weights[t, choice] * swiglu(x[t], gate[e], up[e], down[e])
  def shared(module, rows):
    return swiglu(rows, f64(module.gate.kernel[...]), f64(module.up.kernel[...]),
                  f64(module.down.kernel[...]))
  if layer.shared_visual is not None:
    out += np.where(np.asarray(kind)[:, None] >= 1, shared(layer.shared_visual, x),
                    shared(layer.shared, x))
  elif layer.shared is not None:
    out += shared(layer.shared, x)
  return out


# The dispatches, as moe config overrides: dropless, and capacity with each way of
# filling the slots.
DISPATCHES = {"dropless": {"dispatch": "dropless"},
              "capacity": {"dispatch": "capacity", "capacity_impl": "gather"},
              "capacity_einsum": {"dispatch": "capacity", "capacity_impl": "einsum"}}


@pytest.mark.parametrize("dispatch", list(DISPATCHES))
@pytest.mark.parametrize("overrides", [
    {}, {"granularity": 2}, {"shared_experts": "global"}, {"shared_experts": "per_modality"},
    {"router": "sigmoid"}, {"renormalize": False}, {"d": TILED}])
def test_dispatch_matches_dense_loop(dispatch, overrides):
  # Capacity for every assignment on one expert: nothing can drop.
  cfg = moe_config(**DISPATCHES[dispatch], capacity_factor=4.0 * 2, **overrides)
  layer = moe_lib.MoE(cfg, rngs=nnx.Rngs(0))
  x, kind = inputs(d=cfg.d_model)
  out, stats = layer(x, kind, rows=ROWS)
  want, _ = dense_reference(layer, x, kind)
  np.testing.assert_allclose(f64(out), want, rtol=2e-5, atol=2e-5)
  assert float(stats["drop_rate"]) == 0.0


@pytest.mark.parametrize("impl", ["gather", "einsum"])
@pytest.mark.parametrize("group_rows, group_tokens", [(1, 0), (ROWS, 0), (1, LENGTH // 2)])
def test_capacity_drops_overflow_per_group_in_choice_major_order(impl, group_rows,
                                                                 group_tokens):
  cfg = moe_config(dispatch="capacity", capacity_factor=0.5, capacity_group_rows=group_rows,
                   capacity_group_tokens=group_tokens, capacity_impl=impl)
  layer = moe_lib.MoE(cfg, rngs=nnx.Rngs(1))
  x, kind = inputs(1)
  out, stats = layer(x, kind, rows=ROWS)
  group = group_tokens or group_rows * LENGTH
  capacity = int(np.ceil(0.5 * group * 2 / 4))
  want, drop_rate = dense_reference(layer, x, kind, capacity=capacity, group=group)
  assert drop_rate > 0.1
  np.testing.assert_allclose(f64(out), want, rtol=2e-5, atol=2e-5)
  assert float(stats["drop_rate"]) == pytest.approx(drop_rate)


def test_sigmoid_bias_changes_the_choice_not_the_weight():
  layer = moe_lib.MoE(moe_config(router="sigmoid", renormalize=False), rngs=nnx.Rngs(2))
  layer.router.bias[...] = jnp.array([100.0, 0.0, 0.0, 0.0])
  x, kind = inputs(2)
  experts, weights, _ = layer.router(x, kind)
  assert (np.asarray(experts)[:, 0] == 0).all()                 # everyone picks expert 0 …
  scores = jax.nn.sigmoid(x @ layer.router.kernel[...])
  np.testing.assert_allclose(weights[:, 0], scores[:, 0], rtol=1e-6)   # … at its own score


def test_load_balance_and_z_loss_match_their_formulas_and_ignore_padding():
  layer = moe_lib.MoE(moe_config(), rngs=nnx.Rngs(3))
  x, kind = inputs(3, masked=6)
  _, _, stats = layer.router(x, kind)
  logits = f64(x)[:18] @ f64(layer.router.kernel[...])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  chosen = np.argsort(-probs, -1, kind="stable")[:, :2]
  share = np.bincount(chosen.ravel(), minlength=4) / (18 * 2)
  np.testing.assert_allclose(stats["load_balance"], 4 * np.sum(share * probs.mean(0)), rtol=1e-5)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(stats["router_z"], np.mean(lse ** 2), rtol=1e-5)
  np.testing.assert_array_equal(stats["expert_load"], np.bincount(chosen.ravel(), minlength=4))
  for index, name in enumerate(TOKEN_KINDS):
    of_kind = chosen[np.asarray(kind)[:18] == index]
    np.testing.assert_array_equal(stats["kind_load"][index],
                                  np.bincount(of_kind.ravel(), minlength=4), err_msg=name)


def test_granularity_keeps_active_flops():
  cfg = moe_config(granularity=4)
  assert moe_lib.expert_count(cfg.moe) == 16 and moe_lib.experts_per_token(cfg.moe) == 8
  # Active FFN width per token: (k·G) · (hidden / G) = 8 · 8, the same 2 · 32 as G = 1.
  assert moe_lib.expert_hidden(cfg.moe, cfg.mlp_dim) == 8
  with pytest.raises(ValueError, match="granularity=3 does not divide"):
    moe_lib.expert_hidden(moe_config(granularity=3).moe, 32)


@pytest.mark.parametrize("overrides", [{}, {"granularity": 2, "router": "sigmoid"}])
def test_capacity_gradients_equal_dropless_gradients(overrides):
  """With room for every assignment, both dispatches compute the same function, so their
  gradients (inputs, router, experts) agree too; dropless is plain autodiff of a sort."""
  grads = {}
  for dispatch in ("dropless", "capacity"):
    layer = moe_lib.MoE(moe_config(dispatch=dispatch, capacity_factor=8.0, **overrides),
                        rngs=nnx.Rngs(4))
    graphdef, state = nnx.split(layer)
    x, kind = inputs(4, masked=3)
    def loss(state, x):
      out, stats = nnx.merge(graphdef, state)(x, kind, rows=ROWS)
      return jnp.sum(jnp.sin(out)) + stats["load_balance"]
    grads[dispatch] = jax.grad(loss, argnums=(0, 1))(state, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads["capacity"], grads["dropless"])


@pytest.mark.parametrize("impl, d", [("gather", D), ("gather", TILED), ("einsum", D)])
def test_capacity_gradients_with_drops_equal_autodiff_of_every_expert_on_every_token(impl, d):
  """Where assignments drop, gradients flow only through the kept (token, choice) pairs.
  Reference: autodiff of a gather-free layer that runs every expert on every token and
  keeps the pairs the float64 loop kept."""
  layer = moe_lib.MoE(moe_config(d, dispatch="capacity", capacity_factor=0.5,
                                 capacity_impl=impl), rngs=nnx.Rngs(5))
  x, kind = inputs(5, masked=3, d=d)
  chosen, _, kept = reference_routing(layer, x, kind, capacity=int(np.ceil(0.5 * LENGTH * 2 / 4)))
  chosen, kept = jnp.asarray(chosen), jnp.asarray(kept)
  assert 0.1 < 1 - float(kept.mean()) < 0.9
  graphdef, state = nnx.split(layer)

  def layer_loss(state, x):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x, kind, rows=ROWS)[0]))

  def reference_loss(state, x):
    params = nnx.merge(graphdef, state)
    probs = jax.nn.softmax(x @ params.router.kernel[...], axis=-1)
    weights = jnp.take_along_axis(probs, chosen, axis=-1)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    experts = params.experts
    gate = jnp.einsum("td,edf->tef", x, experts.gate[...])
    up = jnp.einsum("td,edf->tef", x, experts.up[...])
    every = jnp.einsum("tef,efd->ted", jax.nn.silu(gate) * up, experts.down[...])
    picked = jnp.take_along_axis(every, chosen[..., None], axis=1)          # [T, k, d]
    return jnp.sum(jnp.sin(jnp.einsum("tkd,tk->td", picked, weights * kept)))

  got = jax.grad(layer_loss, argnums=(0, 1))(state, x)
  want = jax.grad(reference_loss, argnums=(0, 1))(state, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)


def test_capacity_groups_of_tokens_fall_back_to_a_divisor_of_the_row():
  """Rows of 12 tokens with groups of 5: groups of 4, the largest divisor of 12 below 5,
  so a sampler's prompt of any length runs; a row shorter than a group is one group."""
  layer = moe_lib.MoE(moe_config(dispatch="capacity", capacity_group_tokens=5,
                                 capacity_factor=0.5), rngs=nnx.Rngs(1))
  assert layer.capacity_groups(tokens=T, rows=ROWS) == T // 4
  assert layer.capacity_groups(tokens=ROWS * 4, rows=ROWS) == ROWS
  x, kind = inputs(1)
  out, stats = layer(x, kind, rows=ROWS)
  # C = max(k, ⌈0.5 · 4 tokens · k / E⌉) = 2 slots per expert and group
  want, drop_rate = dense_reference(layer, x, kind, capacity=2, group=4)
  np.testing.assert_allclose(f64(out), want, rtol=2e-5, atol=2e-5)
  assert float(stats["drop_rate"]) == pytest.approx(drop_rate)


@pytest.mark.parametrize("dispatch", list(DISPATCHES))
@pytest.mark.parametrize("keep", [False, True])
def test_remat_keeps_the_experts_hidden_activations_only_when_asked(dispatch, keep, capsys):
  cfg = moe_config(**DISPATCHES[dispatch], remat_keep_hidden=keep)
  cfg.remat = "dots_no_batch"
  graphdef, state = nnx.split(moe_lib.MoE(cfg, rngs=nnx.Rngs(0)))
  x, kind = inputs()
  def loss(state, x):
    return jnp.sum(nnx.merge(graphdef, state)(x, kind, rows=ROWS)[0])
  jax.ad_checkpoint.print_saved_residuals(
      jax.checkpoint(loss, policy=transformer.model_remat_policy(cfg)), state, x)
  saved = capsys.readouterr().out
  assert (moe_lib.EXPERT_HIDDEN in saved) == keep
  assert moe_lib.DISPATCH_INDICES in saved           # the router's choices, at least
  # ... and not its f32 logits, which the backward recomputes
  assert all(moe_lib.DISPATCH_INDICES in line for line in saved.splitlines()
             if "Router" in line), saved


def test_the_backward_of_a_rematerialised_row_gather_dispatch_sorts_nothing():
  """The remat policy keeps the dispatch's slot indices, so the compiled gradient runs the
  slot claims' two sorts once, in the forward, rather than again for the backward."""
  cfg = moe_config(**DISPATCHES["capacity"])
  cfg.remat = "dots_no_batch"
  graphdef, state = nnx.split(moe_lib.MoE(cfg, rngs=nnx.Rngs(0)))
  x, kind = inputs()
  def sorts(policy):
    """Sorts in the compiled gradient of two layers scanned like the decoder's."""
    layer = jax.checkpoint(lambda x: nnx.merge(graphdef, state)(x, kind, rows=ROWS)[0],
                           policy=policy)
    def loss(x):
      return jnp.sum(jax.lax.scan(lambda x, _: (layer(x), None), x, length=2)[0])
    return jax.jit(jax.grad(loss)).lower(x).compile().as_text().count(" sort(")
  assert sorts(transformer.model_remat_policy(cfg)) == 2
  assert sorts(jax.checkpoint_policies.dots_with_no_batch_dims_saveable) == 4


def test_padded_ragged_all_to_all_moves_what_the_ragged_op_would():
  """XLA:CPU has no ragged all-to-all; its stand-in must write what the op specifies:
  device i's operand[send_from[i, j]:][:sizes[i, j]] lands in device j's output at
  lands_at[i, j], everything else in the output left as it was."""
  peers, rows = 4, 6
  rng = np.random.default_rng(0)
  sizes = rng.integers(0, 3, (peers, peers)).astype(np.int32)       # [source, destination]
  send_from = np.cumsum(sizes, 1) - sizes
  lands_at = np.cumsum(sizes, 0) - sizes
  operand = rng.normal(size=(peers, rows, 2)).astype(np.float32)
  output = np.full((peers, peers * rows, 2), -1.0, np.float32)
  want = output.copy()
  for i in range(peers):
    for j in range(peers):
      want[j, lands_at[i, j]:lands_at[i, j] + sizes[i, j]] = (
          operand[i, send_from[i, j]:send_from[i, j] + sizes[i, j]])

  mesh = jax.make_mesh((peers,), ("x",), devices=jax.devices()[:peers],
                       axis_types=(jax.sharding.AxisType.Explicit,))
  split = jax.sharding.PartitionSpec("x")
  def local(operand, output, send_from, sizes, lands_at, received):
    return moe_lib.padded_ragged_all_to_all(operand[0], output[0], send_from[0], sizes[0],
                                            lands_at[0], received[0], "x")[None]
  moved = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(split,) * 6, out_specs=split))(
      *(jax.device_put(a, jax.sharding.NamedSharding(mesh, split))
        for a in (operand, output, send_from, sizes, lands_at, np.ascontiguousarray(sizes.T))))
  np.testing.assert_array_equal(np.asarray(moved), want)


@pytest.mark.parametrize("buffer_factor", [0.0, 0.5])
def test_dropless_over_expert_shards_drops_only_what_overflows_a_buffer(buffer_factor):
  """Two devices, each holding one row and 4 of the 8 experts. Sources fill a
  destination's receive buffer of buffer_factor · (its T·k) rows in device order, each
  with its (token, choice) pairs sorted by expert; a pair that finds no room adds
  nothing. 0 means room for everything: the one-device result."""
  cfg = moe_config(dispatch="dropless", num_experts=8, dropless_buffer_factor=buffer_factor)
  layer = moe_lib.MoE(cfg, rngs=nnx.Rngs(3))
  x, kind = inputs(3)
  chosen, weights, kept = reference_routing(layer, x, kind)
  shards, local, pairs = 2, 4, LENGTH * 2
  room = np.full(shards, shards * pairs if not buffer_factor else int(buffer_factor * pairs))
  for source in range(shards):                     # row `source` lives on device `source`
    rows = range(source * LENGTH, (source + 1) * LENGTH)
    sorted_pairs = sorted(((t, c) for t in rows for c in range(2)),
                          key=lambda p: chosen[p[0], p[1]])
    for t, c in sorted_pairs:
      destination = chosen[t, c] // local
      kept[t, c] = room[destination] > 0
      room[destination] -= 1
  want = expert_sum(layer, x, chosen, weights, kept, kind)

  mesh_config = base.get_config("runlocal").mesh
  mesh_config.update({"data": 1, "fsdp": 1, "expert": shards, "tensor": 1})
  mesh = sharding.make_mesh(mesh_config, jax.devices()[:shards])
  @nnx.jit
  def run(layer, x, kind):
    with sharding.activation_rules(mesh, mesh_config.rules):
      return layer(x, kind, rows=ROWS)
  out, stats = run(layer, x, kind)
  np.testing.assert_allclose(f64(out), want, rtol=2e-5, atol=2e-5)
  assert float(stats["drop_rate"]) == pytest.approx(1 - kept.sum() / kept.size)
  assert (float(stats["drop_rate"]) > 0) == bool(buffer_factor)


def test_capacity_over_an_fsdp_expert_tensor_mesh_keeps_tiled_rows_exact():
  """Rows kept as tiles through a mesh: expert weights gathered over fsdp and read as
  tiles, the buffers exchanged over the expert axis, partial sums added over tensor.
  Four rows of 6 tokens, one per batch shard, room for every assignment."""
  cfg = moe_config(TILED, dispatch="capacity", capacity_impl="gather", capacity_factor=8.0)
  layer = moe_lib.MoE(cfg, rngs=nnx.Rngs(6))
  x, kind = inputs(6, d=TILED)
  want, _ = dense_reference(layer, x, kind)
  mesh_config = base.get_config("runlocal").mesh
  mesh_config.update({"data": 1, "fsdp": 2, "expert": 2, "tensor": 2})
  mesh = sharding.make_mesh(mesh_config, jax.devices()[:8])
  @nnx.jit
  def run(layer, x, kind):
    with sharding.activation_rules(mesh, mesh_config.rules):
      return layer(x, kind, rows=4)
  out, stats = run(layer, x, kind)
  np.testing.assert_allclose(f64(out), want, rtol=2e-5, atol=2e-5)
  assert float(stats["drop_rate"]) == 0.0


@pytest.mark.parametrize("row", [(3,), (2, 4)])      # [N, d] rows, or rows of tiles
def test_gathered_rows_have_the_gradient_autodiff_gives(row):
  """The dispatch gathers carry their own gradient (a gather by the rows' readers); it
  must equal autodiff's scatter-add, empty reads (past the end) included."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, *row)), jnp.float32)
  index = jnp.asarray([4, 0, 5, 2, 0, 5, 1, 4], jnp.int32)           # 5: past the end
  readers = np.full((5, 2), len(index))
  for source in range(5):
    hits = np.flatnonzero(np.asarray(index) == source)
    readers[source, :len(hits)] = hits
  readers = jnp.asarray(readers)
  weights = jnp.asarray(rng.normal(size=(len(index), *row)), jnp.float32)
  def loss(gather):
    return lambda x: jnp.sum(gather(x) * weights)
  plain = jax.grad(loss(lambda x: jnp.take(x, index, axis=0, mode="fill", fill_value=0)))(x)
  custom = jax.grad(loss(lambda x: row_ops.gather_rows(x, index, readers)))(x)
  np.testing.assert_allclose(custom, plain, rtol=1e-6)
  # ... and its transpose, the combine's sum over each row's readers
  def summed(y):
    return jnp.take(y, readers, axis=0, mode="fill", fill_value=0).sum(1)
  np.testing.assert_allclose(row_ops.sum_rows(weights, readers, index), summed(weights),
                             rtol=1e-6)
  def sum_loss(total):
    return lambda y: jnp.sum(total(y) * x)
  np.testing.assert_allclose(
      jax.grad(sum_loss(lambda y: row_ops.sum_rows(y, readers, index)))(weights),
      jax.grad(sum_loss(summed))(weights), rtol=1e-6)


def test_picked_router_weights_equal_take_along_axis_in_value_and_gradient():
  rng = np.random.default_rng(1)
  probs = jnp.asarray(rng.random((6, 5)), jnp.float32)
  experts = jnp.asarray(np.argsort(-rng.random((6, 5)), axis=-1)[:, :2], jnp.int32)
  weights = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
  def loss(pick):
    return lambda p: jnp.sum(pick(p, experts) * weights)
  def take(p, e):
    return jnp.take_along_axis(p, e, axis=-1)
  pick = moe_router._pick                           # pylint: disable=protected-access
  np.testing.assert_array_equal(pick(probs, experts), take(probs, experts))
  np.testing.assert_allclose(jax.grad(loss(pick))(probs), jax.grad(loss(take))(probs),
                             rtol=1e-6)


def test_slot_claims_by_sorting_equal_the_one_hot_claims():
  """The row-gather dispatch's sort-based slot positions and per-expert claims equal the
  one-hot cumulative count's, with padding tokens claiming nothing."""
  rng = np.random.default_rng(7)
  groups, length, k, num_experts = 3, 24, 4, 10
  experts = jnp.asarray(np.stack([rng.choice(num_experts, k, replace=False)
                                  for _ in range(groups * length)]), jnp.int32)
  token_mask = jnp.asarray(rng.random(groups * length) < 0.8)
  chosen, want = moe_capacity._claim_slots(experts, token_mask, length, num_experts)  # pylint: disable=protected-access
  position, claims, queues = moe_capacity._claim_slots_by_sorting(  # pylint: disable=protected-access
      experts, token_mask, length, num_experts)
  real = np.asarray(token_mask).reshape(groups, length, 1).repeat(k, 2)
  np.testing.assert_array_equal(np.asarray(position)[real], np.asarray(want)[real])
  np.testing.assert_array_equal(claims, np.asarray(chosen).sum(axis=(1, 2)))
  # The slots read off the queues: each expert's pairs of a group in claim order
  # (choice-major), token-major ids, the first `slots` of them; the rest empty.
  slots = 3
  got = np.asarray(moe_capacity._slot_pairs(queues, claims, slots, k))  # pylint: disable=protected-access
  ids, mask = np.asarray(experts), np.asarray(token_mask)
  empty = groups * length * k
  for g in range(groups):
    for e in range(num_experts):
      queue = [t * k + c for c in range(k) for t in range(g * length, (g + 1) * length)
               if mask[t] and ids[t, c] == e][:slots]
      np.testing.assert_array_equal(got[e, g], queue + [empty] * (slots - len(queue)))
