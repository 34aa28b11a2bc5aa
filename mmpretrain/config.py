"""Config loading and validation: bad values fail at start with the key and the fix."""
import difflib
import importlib.util
import math
import os

import ml_collections

from mmpretrain.batch import STREAMS
from mmpretrain.config_rules import MAX_STEPS, ConfigError, check_values, refuse


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Imports `path` and calls its get_config(arg) (for scripts outside absl flags)."""
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_mmpretrain_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def check_key_exists(config: ml_collections.ConfigDict, key: str) -> None:
  """Refuses a dotted key the config does not have, suggesting the closest spelling."""
  node, walked = config, []
  for name in key.split("."):
    if not hasattr(node, "keys") or name not in node:
      siblings = list(node.keys()) if hasattr(node, "keys") else []
      close = difflib.get_close_matches(name, siblings, n=1)
      hint = f' (did you mean "{".".join(walked + close)}"?)' if close else ""
      refuse(key, f"no such key{hint}",
             "Fix the spelling, or add the key to the config file's get_config()")
    node = node[name]
    walked.append(name)


def tokens_per_step(config) -> int:
  """Token positions one train step holds, padding included: batch_size × seq_len."""
  return config.data.batch_size * config.data.seq_len


def train_steps(config) -> int:
  """The run's length in steps: train.num_steps, or — when train.tokens is positive — the
  steps that hold that many tokens, rounded up."""
  tokens = config.train.get("tokens", 0)     # absent from the config.json of older runs
  if tokens > 0:
    return math.ceil(tokens / tokens_per_step(config))
  return config.train.num_steps


def _require(ok: bool, key: str, problem: str, fix: str):
  if not ok:
    refuse(key, problem, fix)


def _validate_stream(data, stream: str):
  key = f"data.streams.{stream}"
  settings = data.streams[stream]
  weights = settings.datasets
  unknown = sorted(set(weights) - set(data.datasets))
  _require(not unknown, f"{key}.datasets", f"unknown dataset(s) {unknown}",
           f"Add them to config.data.datasets (it has {sorted(data.datasets)})")
  _require(sum(weights.values()) > 0, f"{key}.datasets",
           f"weights must have a positive sum, got {dict(weights)}",
           f"Give a dataset a positive weight or set data.mixture.{stream}=0")
  frames = {"video": settings.get("frames"),
            "action_video": settings.get("context_frames", 0) + 1}.get(stream)
  if frames is not None:
    _require(0 < frames <= data.max_frames, f"{key}",
             f"a document holds {frames} frames but a row holds data.max_frames={data.max_frames}",
             f"Raise data.max_frames to {frames} or use fewer frames")


def datasets_in_use(config) -> list[str]:
  """Datasets with a positive weight in a stream with a positive mixture weight."""
  return sorted({name for stream, weight in config.data.mixture.items() if weight > 0
                 for name, w in config.data.streams[stream].datasets.items() if w > 0})


def _validate_text_sets(c):
  trained = datasets_in_use(c)
  for name in c.eval.text_sets:
    _require(name in c.data.datasets, "eval.text_sets", f"unknown dataset {name!r}",
             f"Add it to config.data.datasets (it has {sorted(c.data.datasets)})")
    _require("text" in c.data.datasets[name].fields, "eval.text_sets",
             f"dataset {name!r} has no `text` field",
             f"Name its text field in config.data.datasets.{name}.fields, e.g. "
             "fields={'text': 'body'}")
    _require(name not in trained, "eval.text_sets",
             f"dataset {name!r} is trained on, so its perplexity is not held out",
             "Name datasets the mixture does not train on; the streams' own held-out "
             "losses cover the others")


def _validate_moe(m):
  moe = m.moe
  if moe.num_experts == 0:
    return
  _require(moe.experts_per_token <= moe.num_experts, "model.moe.experts_per_token",
           f"{moe.experts_per_token} > num_experts={moe.num_experts}",
           "Route each token to at most num_experts experts")
  hidden = moe.expert_mlp_dim or m.mlp_dim
  _require(hidden % moe.granularity == 0, "model.moe.granularity",
           f"granularity={moe.granularity} does not divide the expert hidden size {hidden}",
           "Pick a granularity that divides model.moe.expert_mlp_dim (or model.mlp_dim)")
  _require(0 <= moe.first_dense_layers < m.num_layers, "model.moe.first_dense_layers",
           f"must lie in [0, num_layers={m.num_layers}), got {moe.first_dense_layers}",
           "Leave at least one layer for MoE, or set model.moe.num_experts=0")


def _validate_length(c):
  tokens, num_steps = c.train.get("tokens", 0), c.train.num_steps
  _require(not (tokens > 0 and num_steps > 0), "train.tokens",
           f"{tokens:g} tokens and train.num_steps={num_steps} both set the run's length",
           "Size it by one: --config.train.num_steps=0 to train on train.tokens, or "
           "--config.train.tokens=0 to train for train.num_steps")
  steps = train_steps(c)
  _require(steps <= MAX_STEPS, "train.tokens",
           f"{tokens:g} tokens take {steps} steps of {tokens_per_step(c)} tokens, more than "
           f"the step counter holds ({MAX_STEPS})", "Train on fewer tokens a run")
  _require(c.optimizer.warmup_steps < steps or steps == 0, "optimizer.warmup_steps",
           f"warmup ({c.optimizer.warmup_steps}) must be shorter than the run's {steps} steps "
           "(train.num_steps, or train.tokens / tokens per step)",
           "Lower the warmup or train longer")


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every key against its rule (config_rules.RULES), then the constraints between
  keys that no single rule can see. Raises ConfigError naming the key and the fix."""
  check_values(c)
  data, m, v, o = c.data, c.model, c.visual, c.optimizer
  unknown = sorted(set(data.mixture) - set(STREAMS))
  _require(not unknown, "data.mixture", f"unknown stream(s) {unknown}",
           f"Use only {list(STREAMS)}")
  _require(sum(data.mixture.values()) > 0, "data.mixture",
           f"weights must have a positive sum, got {dict(data.mixture)}",
           "Give at least one stream a positive weight")
  _require(data.batch_size % data.shards == 0, "data.shards",
           f"{data.shards} does not divide data.batch_size={data.batch_size}",
           "Use a divisor of data.batch_size (each shard supplies batch_size/shards rows)")
  held_out = c.eval.batch_size or data.batch_size
  _require(held_out % data.shards == 0, "eval.batch_size",
           f"{held_out} rows do not split into data.shards={data.shards}",
           "Use a multiple of data.shards (each shard supplies its share of every batch)")
  for stream, weight in data.mixture.items():
    if weight > 0:
      _validate_stream(data, stream)
  _require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
           f"num_heads={m.num_heads} is not a multiple of num_kv_heads={m.num_kv_heads}",
           "Pick num_kv_heads that divides num_heads (grouped-query attention)")
  _require(m.head_dim % 2 == 0, "model.head_dim", f"RoPE needs an even head_dim, got {m.head_dim}",
           "Use an even head_dim")
  _validate_text_sets(c)
  _validate_moe(m)
  _require(not c.diffusion.skip or c.diffusion.prediction == "x", "diffusion.skip",
           f"the skip connection is for x-prediction, not {c.diffusion.prediction!r}",
           "Set --config.diffusion.prediction=x or --config.diffusion.skip=False")
  _require(data.image_size % v.patch_size == 0, "visual.patch_size",
           f"patch_size={v.patch_size} does not divide image_size={data.image_size}",
           "Choose a patch size that divides the latent grid")
  _require(not c.checkpoint.best_metric or c.eval.every_steps > 0, "checkpoint.best_metric",
           f"{c.checkpoint.best_metric!r} needs held-out evaluations",
           "Set --config.eval.every_steps to a positive interval")
  _require(o.learning_rate * o.weight_decay < 1.0, "optimizer.weight_decay",
           f"learning_rate × weight_decay = {o.learning_rate * o.weight_decay:g} ≥ 1 flips the "
           "sign of every decayed weight", "Lower the weight decay")
  _require(data.batch_size % o.grad_accum_steps == 0, "optimizer.grad_accum_steps",
           f"{o.grad_accum_steps} does not divide data.batch_size={data.batch_size}",
           "Make the batch size a multiple of the number of microbatches")
  microbatch = data.batch_size // o.grad_accum_steps
  _require(m.moe.num_experts == 0 or data.seq_len % max(m.moe.capacity_group_tokens, 1) == 0,
           "model.moe.capacity_group_tokens",
           f"{m.moe.capacity_group_tokens} does not divide data.seq_len={data.seq_len}",
           "Use a divisor of the row length (or 0 for groups of whole rows)")
  _require(m.moe.num_experts == 0 or microbatch % m.moe.capacity_group_rows == 0,
           "model.moe.capacity_group_rows",
           f"{m.moe.capacity_group_rows} does not divide the {microbatch} rows of a microbatch",
           "Use a divisor of data.batch_size / optimizer.grad_accum_steps")
  _require(m.moe.num_experts == 0 or held_out % m.moe.capacity_group_rows == 0,
           "eval.batch_size",
           f"{held_out} rows do not split into model.moe.capacity_group_rows="
           f"{m.moe.capacity_group_rows}", "Use a multiple of model.moe.capacity_group_rows")
  _validate_length(c)
  return c
