"""Config loading and validation: bad values fail at start with the key and the fix."""
import importlib.util
import os

import ml_collections

STREAMS = ("text", "image_text", "video", "action_video")
REPRESENTATIONS = ("pixels", "rae", "vae")
SCHEDULES = ("cosine", "wsd", "constant")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Imports `path` and calls its get_config(arg) (for scripts outside absl flags)."""
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location("_mmpretrain_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def _require(ok: bool, key: str, problem: str, fix: str):
  if not ok:
    raise ConfigError(f"config.{key}: {problem}. {fix}")


def _one_of(value, allowed, key: str):
  _require(value in allowed, key, f"{value!r} is not one of {list(allowed)}",
           f"Set --config.{key} to one of them")


def _positive(value, key: str):
  _require(value > 0, key, f"must be > 0, got {value!r}", f"Set --config.{key} to a positive value")


def _validate_stream(d, stream: str):
  key = f"data.streams.{stream}"
  settings = d.streams[stream]
  weights = settings.datasets
  unknown = sorted(set(weights) - set(d.datasets))
  _require(not unknown, f"{key}.datasets", f"unknown dataset(s) {unknown}",
           f"Add them to config.data.datasets (it has {sorted(d.datasets)})")
  _require(all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
           f"{key}.datasets", f"weights must be >= 0 with a positive sum, got {dict(weights)}",
           f"Give a dataset a positive weight or set data.mixture.{stream}=0")
  for prob in ("generation_ratio", "caption_dropout"):
    if prob in settings:
      _require(0.0 <= settings[prob] <= 1.0, f"{key}.{prob}",
               f"must lie in [0, 1], got {settings[prob]}", "Use a probability")
  frames = {"video": settings.get("frames"),
            "action_video": settings.get("context_frames", 0) + 1}.get(stream)
  if frames is not None:
    _require(0 < frames <= d.max_frames, f"{key}",
             f"a document holds {frames} frames but a row holds data.max_frames={d.max_frames}",
             f"Raise data.max_frames to {frames} or use fewer frames")


def _validate_moe(m):
  moe = m.moe
  if moe.num_experts == 0:
    return
  _one_of(moe.router, ("softmax", "sigmoid"), "model.moe.router")
  _one_of(moe.dispatch, ("auto", "dropless", "capacity"), "model.moe.dispatch")
  _one_of(moe.shared_experts, ("none", "global", "per_modality"), "model.moe.shared_experts")
  for key in ("num_experts", "experts_per_token", "granularity", "every_n_layers",
              "capacity_factor", "capacity_group_rows"):
    _positive(moe[key], f"model.moe.{key}")
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


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks cross-field constraints that ml_collections' type checks cannot see."""
  d, m, v, o = c.data, c.model, c.visual, c.optimizer
  for key in ("seq_len", "batch_size", "max_frames", "image_size", "image_channels"):
    _positive(d[key], f"data.{key}")
  for key in ("d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
              "vocab_size"):
    _positive(m[key], f"model.{key}")
  unknown = sorted(set(d.mixture) - set(STREAMS))
  _require(not unknown, "data.mixture", f"unknown stream(s) {unknown}",
           f"Use only {list(STREAMS)}")
  _require(all(w >= 0 for w in d.mixture.values()) and sum(d.mixture.values()) > 0,
           "data.mixture", f"weights must be >= 0 with a positive sum, got {dict(d.mixture)}",
           "Give at least one stream a positive weight")
  _positive(d.shards, "data.shards")
  _require(d.batch_size % d.shards == 0, "data.shards",
           f"{d.shards} does not divide data.batch_size={d.batch_size}",
           "Use a divisor of data.batch_size (each shard supplies batch_size/shards rows)")
  _require(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}",
           "Use 0 for in-process loading")
  for stream, weight in d.mixture.items():
    if weight > 0:
      _validate_stream(d, stream)
  _require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
           f"num_heads={m.num_heads} is not a multiple of num_kv_heads={m.num_kv_heads}",
           "Pick num_kv_heads that divides num_heads (grouped-query attention)")
  _require(m.head_dim % 2 == 0, "model.head_dim", f"RoPE needs an even head_dim, got {m.head_dim}",
           "Use an even head_dim")
  _one_of(m.remat, REMAT_POLICIES, "model.remat")
  _one_of(m.attention_impl, ATTENTION_IMPLS, "model.attention_impl")
  _validate_moe(m)
  _one_of(m.dtype, DTYPES, "model.dtype")
  _one_of(v.representation, REPRESENTATIONS, "visual.representation")
  _require(d.image_size % v.patch_size == 0, "visual.patch_size",
           f"patch_size={v.patch_size} does not divide image_size={d.image_size}",
           "Choose a patch size that divides the latent grid")
  _one_of(c.diffusion.prediction, ("x", "v"), "diffusion.prediction")
  _one_of(c.diffusion.sampler, ("euler", "heun"), "diffusion.sampler")
  _require(c.diffusion.time_shift is None or c.diffusion.time_shift > 0, "diffusion.time_shift",
           f"must be > 0 or None (auto), got {c.diffusion.time_shift}", "Use a positive shift")
  _positive(c.diffusion.logit_normal_std, "diffusion.logit_normal_std")
  _positive(c.diffusion.sample_steps, "diffusion.sample_steps")
  _one_of(o.schedule, SCHEDULES, "optimizer.schedule")
  _one_of(c.train.nonfinite, ("skip", "stop"), "train.nonfinite")
  _one_of(c.checkpoint.best_mode, ("min", "max"), "checkpoint.best_mode")
  _require(not c.checkpoint.best_metric or c.eval.every_steps > 0, "checkpoint.best_metric",
           f"{c.checkpoint.best_metric!r} needs held-out evaluations",
           "Set --config.eval.every_steps to a positive interval")
  _require(0.0 < o.decay_fraction <= 1.0, "optimizer.decay_fraction",
           f"must lie in (0, 1], got {o.decay_fraction}", "Use a fraction of the run")
  _positive(o.grad_accum_steps, "optimizer.grad_accum_steps")
  _require(d.batch_size % o.grad_accum_steps == 0, "optimizer.grad_accum_steps",
           f"{o.grad_accum_steps} does not divide data.batch_size={d.batch_size}",
           "Make the batch size a multiple of the number of microbatches")
  microbatch = d.batch_size // o.grad_accum_steps
  _require(m.moe.num_experts == 0 or microbatch % m.moe.capacity_group_rows == 0,
           "model.moe.capacity_group_rows",
           f"{m.moe.capacity_group_rows} does not divide the {microbatch} rows of a microbatch",
           "Use a divisor of data.batch_size / optimizer.grad_accum_steps")
  _require(o.warmup_steps < c.train.num_steps or c.train.num_steps == 0, "optimizer.warmup_steps",
           f"warmup ({o.warmup_steps}) must be shorter than train.num_steps ({c.train.num_steps})",
           "Lower the warmup or train longer")
  return c
