"""Orbax checkpoints of a run: the sharded train state, every process's data iterator, the
config. The workdir is the unit of resumption (big_vision style).

<workdir>/checkpoints/<step>/ holds three items: `state` (params — dense and expert —,
optimizer state, step and the rng key's data, each array in its shards), `data` (the grain
iterator state of every data shard, written by the process that loads it) and `config`
(JSON). Orbax writes a step under a temporary name and renames it when complete, so a save
killed midway is never picked up.
"""
import dataclasses
import json

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mmpretrain import storage
from mmpretrain.train.step import TrainState

CHECKPOINT_DIR = "checkpoints"
PARAMS_DIR = "params"
BEST_DIR, BEST_RECORD = "best", "best.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (bad files on disk); the message names it and
  the way out."""


class DataShardsMismatch(ValueError):
  """The checkpoint's data iterators were saved with another `data.shards` (a config
  mistake, not a damaged checkpoint: never a reason to fall back to an older one)."""


class DataShardsHandler(ocp.CheckpointHandler):
  """Orbax handler for pipeline.ShardedBatches: one JSON file per data shard.

  Files are keyed by shard, not by process, so a run restored with another number of
  processes (same `data.shards`) continues every shard exactly where it stopped.
  """

  @staticmethod
  def _path(directory: epath.Path, shard: int, num_shards: int) -> epath.Path:
    return directory / f"shard_{shard:05d}-of-{num_shards:05d}.json"

  def save(self, directory: epath.Path, args: "DataShardsSave"):
    batches = args.item
    for shard, state in batches.shard_states().items():
      path = self._path(directory, shard, batches.num_shards)
      partial = path.parent / f"{path.name}.{jax.process_index()}.tmp"
      partial.write_text(json.dumps(state))
      partial.rename(path)    # atomic: processes that load the same shard write it alike

  def restore(self, directory: epath.Path, args: "DataShardsRestore"):
    batches = args.item
    states = {}
    for shard in batches.iterators:
      path = self._path(directory, shard, batches.num_shards)
      if not path.exists():
        saved = {int(p.stem.split("-of-")[-1]) for p in directory.glob("shard_*-of-*.json")}
        raise DataShardsMismatch(
            f"{path} is missing: the data iterators were saved with data.shards="
            f"{','.join(map(str, sorted(saved))) or 'none'}, "
            f"this run has {batches.num_shards}; resume with the saved data.shards")
      states[shard] = json.loads(path.read_text())
    batches.set_shard_states(states)
    return batches


@ocp.args.register_with_handler(DataShardsHandler, for_save=True)
@dataclasses.dataclass
class DataShardsSave(ocp.args.CheckpointArgs):
  item: object


@ocp.args.register_with_handler(DataShardsHandler, for_restore=True)
@dataclasses.dataclass
class DataShardsRestore(ocp.args.CheckpointArgs):
  item: object


def _storable(state: TrainState) -> TrainState:
  """Typed PRNG keys are stored as their raw uint32 data."""
  return state.replace(rng=jax.random.key_data(state.rng))


def pretrained_state(trainer, config):
  """A fresh state (new optimizer, step 0) holding the parameters of the run at
  config.train.init_from (its checkpoint train.init_step, -1: the newest), read alone
  (Orbax partial restore, the optimizer state left on disk) in this run's shardings."""
  tcfg = config.train
  directory = storage.join(storage.absolute(tcfg.init_from), CHECKPOINT_DIR)
  steps = ([int(s) for s in storage.listdir(directory) if s.isdigit()]
           if storage.isdir(directory) else [])
  step = max(steps, default=None) if tcfg.init_step < 0 else tcfg.init_step
  if step not in steps:
    raise FileNotFoundError(f"train.init_from={tcfg.init_from!r} has no checkpoint "
                            f"{'at all' if step is None else step} in {directory}: point it at "
                            "a trained run's workdir")
  source = RunCheckpoints(tcfg.init_from, config.checkpoint)
  try:
    params = source.restore_params(step, trainer.abstract_state().params)
  finally:
    source.close()
  return dataclasses.replace(trainer.init_state(config.seed), params=params)


class RunCheckpoints:
  """Saves every `config.checkpoint.every_steps` steps, keeps the newest `keep`."""

  def __init__(self, workdir: str, ccfg):
    self.directory = storage.join(storage.absolute(workdir), CHECKPOINT_DIR)
    self.every_steps = ccfg.every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ccfg.keep, enable_async_checkpointing=ccfg.async_save, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": DataShardsHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int, last_step: int) -> bool:
    return step == last_step or (self.every_steps > 0 and step % self.every_steps == 0)

  def save(self, step: int, state: TrainState, batches, config) -> None:
    """Starts saving `state` after `step` completed steps (returns while the write runs)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_storable(state)),
        data=DataShardsSave(batches),
        config=ocp.args.JsonSave(config.to_dict())), force=True)

  def restore(self, step: int, target_state: TrainState, batches=None) -> TrainState:
    """The state saved at `step`, laid out like `target_state` (Trainer.abstract_state:
    shardings of this run's mesh, which may differ from the one that saved), with the
    data iterator `batches` (if given) moved to where it was."""
    rng = target_state.rng
    key_data = jax.eval_shape(jax.random.key_data, rng)
    target = target_state.replace(rng=jax.ShapeDtypeStruct(key_data.shape, key_data.dtype,
                                                           sharding=rng.sharding))
    items = {"state": ocp.args.StandardRestore(target)}
    if batches is not None:
      items["data"] = DataShardsRestore(batches)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = restored.state
    return state.replace(rng=jax.random.wrap_key_data(state.rng))

  def restore_params(self, step: int, target_params):
    """Only the parameters saved at `step`, laid out like `target_params`
    (Run.abstract_params); the optimizer state stays on disk."""
    target = {"params": target_params}
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
          storage.join(self.directory, str(step), "state"),
          args=ocp.args.PyTreeRestore(
              item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))
    return restored["params"]

  def restore_newest(self, target_state: TrainState, batches, fallback: bool):
    """(step, state) of the newest checkpoint, or (0, None) if there is none.

    A checkpoint that fails to restore (missing or corrupt files) is an error naming its
    step and the failure; with `fallback`, it is renamed <step>.unrestorable and the next
    older one is tried.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return step, self.restore(step, target_state, batches)
      except DataShardsMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
        where = storage.join(self.directory, str(step))
        if not fallback:
          raise CheckpointError(
              f"checkpoint {where} cannot be restored ({type(e).__name__}: {e}). Set "
              "config.checkpoint.fallback=True to resume from the newest older checkpoint "
              f"that restores, or move {where} away") from e
        # Moved aside (kept for a post-mortem), so the run can save this step again.
        epath.Path(where).rename(where + ".unrestorable")
        self.manager.reload()
        logging.warning("checkpoint %s cannot be restored (%s): moved to %s.unrestorable; "
                        "trying an older one", where, e, where)
    return 0, None

  def close(self) -> None:
    """Waits for a running save and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


class BestParams:
  """Keep-best by an eval metric: the parameters of the best evaluation so far, in
  <workdir>/best/step_<N> (readable with `load_params`) and best.json naming it.

  Kept apart from the resumable checkpoints, so the newest state is never dropped for a
  better-scoring older one. A resumed run reads best.json and keeps competing with it.
  """

  def __init__(self, workdir: str, metric: str, mode: str):
    self.directory = storage.join(storage.absolute(workdir), BEST_DIR)
    self.metric, self.mode = metric, mode
    path = storage.join(self.directory, BEST_RECORD)
    self.record = storage.read_json(path) if storage.exists(path) else None

  def _better(self, value: float) -> bool:
    if self.record is None:
      return True
    best = self.record["value"]
    return value < best if self.mode == "min" else value > best

  def update(self, step: int, evaluation: dict, params) -> bool:
    """Saves `params` if `evaluation[metric]` beats the best so far; returns whether it did."""
    if self.metric not in evaluation:
      raise ValueError(f"checkpoint.best_metric={self.metric!r} is not an evaluation result; "
                       f"use one of {sorted(k for k in evaluation if k != 'step')}")
    value = float(evaluation[self.metric])
    if not self._better(value):
      return False
    path = storage.join(self.directory, f"step_{step}")
    with ocp.StandardCheckpointer() as checkpointer:     # every process writes its shards
      checkpointer.save(path, params, force=True)
    if jax.process_index() == 0:
      record = {"step": step, "metric": self.metric, "value": value, "params": path}
      storage.write_json(storage.join(self.directory, BEST_RECORD), record)  # then the old goes
      for name in storage.listdir(self.directory):
        if name.startswith("step_") and name != f"step_{step}":
          storage.rmtree(storage.join(self.directory, name))
    self.record = {"step": step, "metric": self.metric, "value": value, "params": path}
    return True


def export_params(workdir: str, ccfg, run, step: int | None = None) -> str:
  """Writes the parameters of checkpoint `step` (default: the newest) alone — no optimizer
  state, no data iterators — to <workdir>/params/<step>; returns that path."""
  checkpoints = RunCheckpoints(workdir, ccfg)
  step = checkpoints.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}: train first")
  params = checkpoints.restore_params(step, run.abstract_params())
  checkpoints.close()
  path = storage.join(storage.absolute(workdir), PARAMS_DIR, str(step))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, params)
  return path


def load_params(path: str, run):
  """Parameters written by export_params, laid out for `run`'s mesh (or one device)."""
  if not storage.isdir(path):
    raise FileNotFoundError(f"{path} does not exist: write it with `mmpretrain export-params`")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, run.abstract_params())
