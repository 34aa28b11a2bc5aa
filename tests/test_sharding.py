"""The (data, fsdp, expert, tensor) mesh: global batches, parameter layout, and a sharded
train step that equals the one-device step."""
import functools

import jax
import numpy as np
import pytest

from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from mmpretrain import sharding
from mmpretrain.data.pipeline import make_batches
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec


def mesh_config(config, data, fsdp, expert, tensor):
  config.mesh.update({"data": data, "fsdp": fsdp, "expert": expert, "tensor": tensor})
  return config.mesh


def moe_config(config, dispatch: str = "capacity"):
  """An MoE layer then a dense one; 8 experts so a 4-way expert axis holds 2 each.
  `dispatch` "capacity_einsum": capacity slots filled by one-hot matmuls, in groups of
  half a row."""
  config.model.moe.update({"num_experts": 8, "experts_per_token": 2, "every_n_layers": 2,
                           "shared_experts": "per_modality", "dispatch": dispatch})
  if dispatch == "capacity_einsum":
    config.model.moe.update({"dispatch": "capacity", "capacity_impl": "einsum",
                             "capacity_group_tokens": config.data.seq_len // 2})
  return config


def host_batch(config, tokenizer):
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  return {k: v for k, v in batch.items() if not k.startswith("skipped_")}


def test_global_batch_holds_the_local_rows_split_over_devices(config, tokenizer):
  mesh = sharding.make_mesh(config.mesh)
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "expert": 1, "tensor": 1}
  local = host_batch(config, tokenizer)
  batch = sharding.global_batch(local, mesh, config.mesh.rules, config.data.batch_size)
  for key, value in local.items():
    np.testing.assert_array_equal(np.asarray(batch[key]), value, err_msg=key)
    assert len(batch[key].sharding.device_set) == jax.device_count() == 8
    assert batch[key].addressable_shards[0].data.shape[0] == config.data.batch_size // 8


@pytest.mark.parametrize("sizes, message", [
    ((3, -1, 1, 1), "do not split into 3"),
    ((2, 2, 1, 1), "needs 4 devices but there are 8"),
    ((-1, -1, 1, 1), "at most one -1"),
])
def test_mesh_sizes_that_do_not_fit_the_devices_are_refused(config, sizes, message):
  with pytest.raises(sharding.ShardingError, match=message):
    sharding.make_mesh(mesh_config(config, *sizes))


def test_batch_or_parameters_that_do_not_split_are_refused_naming_the_fix(config, tokenizer):
  config.data.batch_size = 12
  with pytest.raises(sharding.ShardingError, match="batch_size=12 does not split 8 ways"):
    Trainer(Run(config, sharding.make_mesh(config.mesh)), tokenizer.byte_lengths())
  config.data.batch_size = 8
  config.model.num_heads = config.model.num_kv_heads = 1    # one head over 2 tensor shards
  mesh = sharding.make_mesh(mesh_config(config, -1, 1, 1, 2))
  with pytest.raises(sharding.ShardingError, match=r"heads', size 1\) .* does not split 2 ways .* "
                     r"change config\.mesh\.rules\.(kv_)?heads"):
    Trainer(Run(config, mesh), tokenizer.byte_lengths())


def test_parameters_and_optimizer_state_follow_the_rules(config, tokenizer):
  moe_config(config)
  mesh = sharding.make_mesh(mesh_config(config, 1, 2, 2, 2))
  trainer = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  state = trainer.init_state(0)
  experts = state.params["decoder"]["runs"][0]["blocks"]["ffn"]["experts"]
  # [layers, expert, embed, mlp] -> (None, expert, fsdp, tensor): 2·2·2 shards of 1/8 each.
  assert experts["gate"].sharding.spec == P(None, "expert", "fsdp", "tensor")
  assert experts["gate"].addressable_shards[0].data.shape == (1, 4, 32, 64)
  adam = state.opt_state[1][0]
  mu_gate = adam.mu["decoder"]["runs"][0]["blocks"]["ffn"]["experts"]["gate"]
  assert mu_gate.sharding.spec == experts["gate"].sharding.spec
  assert state.params["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
  assert state.rng.sharding.is_fully_replicated
  # The samplers hold the weights whole over the batch's fsdp split, still split over the
  # expert and tensor axes.
  sampling = trainer.run.sampling_param_sharding
  assert (sampling["decoder"]["runs"][0]["blocks"]["ffn"]["experts"]["gate"].spec
          == P(None, "expert", None, "tensor"))
  assert sampling["embed"]["embedding"].spec == P("tensor", None)


@pytest.fixture(scope="module")
def one_device_moe_step(data_dir, tokenizer):
  """dispatch -> the MoE config's batch and its train step on one device (no mesh)."""
  @functools.cache
  def step(dispatch):
    config = moe_config(tiny_config(data_dir), dispatch)
    batch = host_batch(config, tokenizer)
    trainer = Trainer(Run(config), tokenizer.byte_lengths())
    state, metrics = trainer.step(trainer.init_state(0), batch)
    return batch, jax.device_get(state.params), jax.device_get(metrics)
  return step


@pytest.mark.parametrize("dispatch, sizes", [
    pytest.param("capacity", (8, 1, 1, 1), marks=pytest.mark.slow),   # data parallel only
    pytest.param("capacity", (2, 2, 2, 1), marks=pytest.mark.slow), ("capacity", (1, 2, 4, 1)),
    pytest.param("capacity", (2, 1, 2, 2), marks=pytest.mark.slow),
    pytest.param("capacity_einsum", (1, 2, 4, 1), marks=pytest.mark.slow),
    ("dropless", (1, 2, 4, 1)), pytest.param("dropless", (2, 1, 2, 2), marks=pytest.mark.slow)])
def test_sharded_moe_step_equals_one_device_step(config, tokenizer, one_device_moe_step,
                                                 dispatch, sizes):
  """Loss, gradient norm and updated parameters agree to float32 reduction-order noise
  (rtol 1e-5 on metrics; rtol 1e-4 / atol 1e-6 on parameters after one AdamW step).
  Capacity drops are decided per row, so they are the same on every mesh; dropless
  dispatch moves rows between expert shards with a ragged all-to-all."""
  batch, ref_params, ref_metrics = one_device_moe_step(dispatch)
  moe_config(config, dispatch)

  mesh = sharding.make_mesh(mesh_config(config, *sizes))
  trainer = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  state, metrics = trainer.step(trainer.init_state(0),
                                sharding.global_batch(batch, mesh, config.mesh.rules,
                                                      config.data.batch_size))
  assert float(metrics["moe_drop_rate"]) == pytest.approx(float(ref_metrics["moe_drop_rate"]))
  for key in ("loss", "text_loss", "flow_loss", "moe_load_balance", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
  np.testing.assert_array_equal(metrics["moe_routing"], ref_metrics["moe_routing"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(state.params), ref_params)


def test_expert_axis_moves_tokens_by_all_to_all(config, tokenizer):
  moe_config(config)
  mesh = sharding.make_mesh(mesh_config(config, 1, 2, 4, 1))
  trainer = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  batch = sharding.global_batch(host_batch(config, tokenizer), mesh, config.mesh.rules,
                                config.data.batch_size)
  hlo = trainer.lower_step(trainer.init_state(0), batch).compile().as_text()
  assert "all-to-all" in hlo


def test_expert_axis_that_does_not_split_the_batch_is_refused(config, tokenizer):
  moe_config(config)
  config.mesh.rules.batch = ("data", "fsdp")
  mesh = sharding.make_mesh(mesh_config(config, 4, 1, 2, 1))
  trainer = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  batch = sharding.global_batch(host_batch(config, tokenizer), mesh, config.mesh.rules,
                                config.data.batch_size)
  with pytest.raises(sharding.ShardingError, match=r"expert axes \('expert',\) must also split"):
    trainer.step(trainer.init_state(0), batch)


class FakeDevice:
  """Enough of a TPU device for laying out a mesh: an id, its slice, its process."""

  def __init__(self, id_, slice_index, process_index):
    self.id, self.slice_index, self.process_index = id_, slice_index, process_index
    self.platform = self.device_kind = "cpu"

  def __repr__(self):
    return f"d{self.id}@s{self.slice_index}"


def test_multislice_data_axis_crosses_slices_only_between_its_halves():
  """2 slices × 4 devices, mesh data=4 × fsdp=2 with dcn_data=2: the first half of the data
  axis lives in slice 0, the second in slice 1, and every fsdp group stays in one slice."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  devices = [FakeDevice(i, i // 4, i // 2) for i in range(8)]
  mesh = ml_collections.ConfigDict(dict(data=4, fsdp=2, expert=1, tensor=1, dcn_data=2))
  grid = sharding.device_grid(mesh, devices)
  slice_of = np.vectorize(lambda d: d.slice_index)(grid)[..., 0, 0]    # [data, fsdp]
  np.testing.assert_array_equal(slice_of, [[0, 0], [0, 0], [1, 1], [1, 1]])
  assert sorted(d.id for d in grid.flat) == list(range(8))
  mesh.dcn_data = 3
  with pytest.raises(sharding.ShardingError, match="dcn_data=3 must divide"):
    sharding.device_grid(mesh, devices)


def test_fsdp_step_embeds_each_row_on_its_own_devices(config, tokenizer):
  """Under fsdp the embeddings (text, latent and the timestep MLP) are computed on the
  devices holding their rows: no collective carries a [B·L, d] activation of the whole
  batch (left to follow the fsdp-split weights, XLA ran the timestep MLP on every
  device's copy of the batch and all-reduced it)."""
  mesh = sharding.make_mesh(mesh_config(config, 1, 8, 1, 1))
  trainer = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  batch = sharding.global_batch(host_batch(config, tokenizer), mesh, config.mesh.rules,
                                config.data.batch_size)
  hlo = trainer.lower_step(trainer.init_state(0), batch).compile().as_text()
  whole_batch = f"[{config.data.batch_size * config.data.seq_len},{config.model.d_model}]"
  collectives = [line for line in hlo.splitlines()
                 if whole_batch in line and ("all-reduce(" in line or "all-gather(" in line)]
  assert not collectives, collectives[:3]
