"""What every config key accepts: one rule per key (or key pattern), checked before a run
builds anything, so a value either works or is refused with the key and the fix.

Rules are keyed by dotted path; `*` matches one level (datasets, mixture streams and mesh
rules are open-ended). Cross-field constraints (divisibility, sums) live in config.validate.
"""
import dataclasses
import fnmatch
import math

MAX_STEPS = 2**31 - 1        # the step counter is int32
MAX_TOKENS = 2.0**53         # tokens of a run: counts a float64 (JSON, TensorBoard) holds exactly
MAX_SIZE = 2**24             # tokens in a row, rows in a batch, hidden units, vocabulary
MAX_COUNT = 2**16            # layers, heads, experts, devices per mesh axis, images in an eval
MESH_AXES = ("data", "fsdp", "expert", "tensor")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum", "chunked", "pallas")  # model/attention.py
MODALITY_FFN_IMPLS = ("auto", "select", "grouped")                  # model/modality_ffn.py
GENERATIVE_EVALS = ("caption_accuracy", "generation", "world_model", "vqa",  # train/evaluate.py
                    "fid", "clip_score")
# model.remat: which activations of a layer the backward pass keeps (the rest it
# recomputes), as the jax.checkpoint_policies member that says so; "none" keeps everything.
REMAT_POLICIES = {"none": None, "full": "nothing_saveable", "dots": "checkpoint_dots",
                  "dots_no_batch": "dots_with_no_batch_dims_saveable"}


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def refuse(key: str, problem: str, fix: str):
  raise ConfigError(f"config.{key}: {problem}. {fix}")


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in [lo, hi], or one of `also` (sentinels such as -1 = 'what is left')."""
  lo: int
  hi: int = MAX_SIZE
  also: tuple = ()

  def check(self, key, value):
    if isinstance(value, bool) or not isinstance(value, int):
      refuse(key, f"must be an integer, got {value!r}", f"Set --config.{key} to an integer")
    if value in self.also:
      return
    if not self.lo <= value <= self.hi:
      extra = f" (or {', '.join(map(str, self.also))})" if self.also else ""
      refuse(key, f"must lie in [{self.lo}, {self.hi}]{extra}, got {value}",
             f"Set --config.{key} to a value in that range")


@dataclasses.dataclass(frozen=True)
class Real:
  """A finite number in the interval lo..hi; `open` names the ends that are excluded."""
  lo: float
  hi: float = math.inf
  open: str = ""               # "lo", "hi" or "lo,hi"

  def check(self, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      refuse(key, f"must be a finite number, got {value!r}", f"Set --config.{key} to a number")
    low_ok = value > self.lo if "lo" in self.open else value >= self.lo
    high_ok = value < self.hi if "hi" in self.open else value <= self.hi
    if not (low_ok and high_ok):
      left, right = "(" if "lo" in self.open else "[", ")" if "hi" in self.open else "]"
      refuse(key, f"must lie in {left}{self.lo}, {self.hi}{right}, got {value}",
             f"Set --config.{key} to a value in that range")


@dataclasses.dataclass(frozen=True)
class Choice:
  values: tuple

  def check(self, key, value):
    if value not in self.values:
      refuse(key, f"{value!r} is not one of {list(self.values)}",
             f"Set --config.{key} to one of them")


@dataclasses.dataclass(frozen=True)
class Optional:
  """None (the documented automatic value) or what `rule` accepts."""
  rule: object

  def check(self, key, value):
    if value is not None:
      self.rule.check(key, value)


@dataclasses.dataclass(frozen=True)
class Sequence:
  """A list or tuple (non-empty unless `may_be_empty`) whose items `item` accepts."""
  item: object
  may_be_empty: bool = False

  def check(self, key, value):
    if (isinstance(value, str) or not isinstance(value, (list, tuple))
        or not (value or self.may_be_empty)):
      refuse(key, f"must be a non-empty list, got {value!r}", f"Set --config.{key} to a list")
    for item in value:
      self.item.check(key, item)


@dataclasses.dataclass(frozen=True)
class Text:
  """Free text: a path, a name, a caption ('' where the key's comment says so)."""

  def check(self, key, value):
    if not isinstance(value, str):
      refuse(key, f"must be a string, got {value!r}", f"Set --config.{key} to a string")


@dataclasses.dataclass(frozen=True)
class Flag:
  def check(self, key, value):
    if not isinstance(value, bool):
      refuse(key, f"must be True or False, got {value!r}", f"Set --config.{key} to a boolean")


PROBABILITY = Real(0.0, 1.0)
WEIGHT = Real(0.0)                       # a mixture or loss weight (any scale works)
STEPS = Int(0, MAX_STEPS)
WIDTH = Int(1, MAX_SIZE)
COUNT = Int(1, MAX_COUNT)
AXIS_NAMES = Sequence(Choice(MESH_AXES))

RULES = {
    "seed": Int(0, 2**31 - 1),
    # data
    "data.data_dir": Text(),
    "data.seq_len": WIDTH,
    "data.batch_size": WIDTH,
    "data.max_frames": Int(0, MAX_COUNT),   # 0: text only, no visual path in the model
    "data.image_size": Int(1, 8192),
    "data.image_channels": Choice((1, 3)),
    "data.mixture.*": WEIGHT,
    "data.mixture_unit": Choice(("documents", "tokens")),
    "data.shards": COUNT,
    "data.num_workers": Int(0, 1024),
    "data.worker_buffer_size": Int(1, 1024),
    "data.on_unreadable": Choice(("error", "skip")),
    "data.max_unreadable_fraction": PROBABILITY,
    "data.streams.*.datasets.*": WEIGHT,
    "data.streams.*.generation_ratio": PROBABILITY,
    "data.streams.*.caption_dropout": PROBABILITY,
    "data.streams.*.frames": COUNT,
    "data.streams.*.fps": Real(0.0, 1000.0, open="lo"),
    "data.streams.*.context_frames": COUNT,
    "data.datasets.*.*": Text(),
    "data.datasets.*.fields.*": Text(),
    "data.tokenizer.vocab_size": Int(16, MAX_SIZE),
    "data.tokenizer.path": Text(),
    # visual representation
    "visual.representation": Choice(("pixels", "rae", "vae")),
    "visual.cached_latents": Flag(),
    "visual.latent_cache_dtype": Choice(("bfloat16", "float32")),
    "visual.patch_size": Int(1, 1024),
    "visual.checkpoint": Text(),
    # model
    "model.vocab_size": Int(16, MAX_SIZE),
    "model.d_model": WIDTH,
    "model.num_layers": COUNT,
    "model.num_heads": COUNT,
    "model.num_kv_heads": COUNT,
    "model.head_dim": Int(2, MAX_COUNT),
    "model.mlp_dim": WIDTH,
    "model.modality_ffn": Flag(),
    "model.modality_ffn_impl": Choice(MODALITY_FFN_IMPLS),
    "model.mot": Flag(),
    "model.qk_norm": Flag(),
    "model.rope_theta": Real(1.0, 1e9, open="lo"),
    "model.norm_eps": Real(0.0, 1.0, open="lo"),
    "model.tie_embeddings": Flag(),
    "model.init_std": Real(0.0, 10.0, open="lo"),
    "model.scan_layers": Flag(),
    "model.remat": Choice(tuple(REMAT_POLICIES)),
    "model.dtype": Choice(("float32", "bfloat16")),
    "model.attention_impl": Choice(ATTENTION_IMPLS),
    "model.attention_chunk": Int(1, MAX_SIZE),
    "model.flow_head.width": Int(0, MAX_SIZE),
    "model.flow_head.depth": Int(0, MAX_COUNT),
    "model.frame_positions": Flag(),
    "model.moe.num_experts": Int(0, MAX_COUNT),
    "model.moe.experts_per_token": COUNT,
    "model.moe.granularity": COUNT,
    "model.moe.expert_mlp_dim": Int(0, MAX_SIZE),
    "model.moe.shared_experts": Choice(("none", "global", "per_modality")),
    "model.moe.shared_mlp_dim": Int(0, MAX_SIZE),
    "model.moe.router": Choice(("softmax", "sigmoid")),
    "model.moe.renormalize": Flag(),
    "model.moe.dispatch": Choice(("auto", "dropless", "capacity")),
    "model.moe.capacity_factor": Real(0.0, 64.0, open="lo"),
    "model.moe.capacity_group_rows": WIDTH,
    "model.moe.capacity_group_tokens": Int(0, MAX_SIZE),
    "model.moe.capacity_impl": Choice(("gather", "einsum")),
    "model.moe.remat_keep_hidden": Flag(),
    "model.remat_keep_attention": Flag(),
    "model.moe.dropless_buffer_factor": Real(0.0, 1024.0),
    "model.moe.first_dense_layers": Int(0, MAX_COUNT),
    "model.moe.every_n_layers": COUNT,
    "model.moe.bias_update_rate": PROBABILITY,
    # parallelism
    "mesh.data": Int(1, MAX_COUNT, also=(-1,)),
    "mesh.fsdp": Int(1, MAX_COUNT, also=(-1,)),
    "mesh.expert": Int(1, MAX_COUNT, also=(-1,)),
    "mesh.tensor": Int(1, MAX_COUNT, also=(-1,)),
    "mesh.dcn_data": COUNT,
    "mesh.rules.*": AXIS_NAMES,
    # flow matching
    "diffusion.prediction": Choice(("x", "v", "eps")),
    "diffusion.time_shift": Optional(Real(0.0, 1e3, open="lo")),
    "diffusion.logit_normal_mean": Real(-10.0, 10.0),
    "diffusion.logit_normal_std": Real(0.0, 10.0, open="lo"),
    "diffusion.min_t": Real(0.0, 1.0, open="lo,hi"),
    "diffusion.sample_steps": Int(1, 10_000),
    "diffusion.sampler": Choice(("euler", "heun")),
    "diffusion.cfg_scale": Real(0.0, 100.0),
    "diffusion.context_noise": PROBABILITY,
    "diffusion.skip": Flag(),
    "diffusion.data_std": Real(0.0, 100.0, open="lo"),
    # loss
    "loss.text_weight": WEIGHT,
    "loss.flow_weight": WEIGHT,
    "loss.flow_space": Choice(("prediction", "x", "v", "eps")),
    "loss.z_loss": WEIGHT,
    "loss.frame_change_weight": WEIGHT,
    "loss.frame_change_threshold": WEIGHT,
    "loss.moe_load_balance": WEIGHT,
    "loss.moe_router_z": WEIGHT,
    # optimizer
    "optimizer.learning_rate": Real(0.0, 1.0, open="lo"),
    "optimizer.schedule": Choice(("cosine", "wsd", "constant")),
    "optimizer.warmup_steps": STEPS,
    "optimizer.decay_fraction": Real(0.0, 1.0, open="lo"),
    "optimizer.min_lr_ratio": PROBABILITY,
    "optimizer.b1": Real(0.0, 1.0, open="hi"),
    "optimizer.b2": Real(0.0, 1.0, open="hi"),
    "optimizer.eps": Real(0.0, 1.0, open="lo"),   # 0 divides 0 by 0 for unused embeddings
    "optimizer.weight_decay": Real(0.0, 10.0),
    "optimizer.grad_clip_norm": WEIGHT,            # 0 = no clipping
    "optimizer.grad_accum_steps": COUNT,
    # loop, evaluation, checkpoints, analyses
    "train.num_steps": STEPS,
    "train.tokens": Real(0.0, MAX_TOKENS),
    "train.log_every": Int(1, MAX_STEPS),
    "train.profile_start": Int(0, MAX_STEPS),
    "train.profile_steps": Int(0, MAX_STEPS),
    "train.nonfinite": Choice(("skip", "stop")),
    "eval.every_steps": STEPS,
    "eval.batches": COUNT,
    "eval.batch_size": Optional(WIDTH),
    "train.init_from": Text(),
    "train.init_step": Int(-1, MAX_STEPS),
    "eval.split": Choice(("train", "validation")),
    "eval.text_sets": Sequence(Text(), may_be_empty=True),
    "eval.generative": Sequence(Choice(GENERATIVE_EVALS), may_be_empty=True),
    "eval.caption_images": COUNT,
    "eval.caption_tokens": Int(1, 4096),
    "eval.world_model_episodes": COUNT,
    "eval.world_model_horizons": Sequence(Int(1, 10_000)),
    "eval.classifier": Text(),
    "eval.generation_prompts": Sequence(Text()),
    "eval.generation_images_per_prompt": COUNT,
    "eval.frechet_real_images": Int(2, MAX_SIZE),
    "eval.vqa_questions": Int(0, MAX_SIZE),
    "eval.vqa_answer_tokens": Int(1, 4096),
    "eval.fid_inception": Text(),
    "eval.fid_reference": Text(),
    "eval.fid_images": Int(2, MAX_SIZE),
    "eval.clip_siglip": Text(),
    "checkpoint.every_steps": STEPS,
    "checkpoint.keep": COUNT,
    "checkpoint.async_save": Flag(),
    "checkpoint.fallback": Flag(),
    "checkpoint.best_metric": Text(),
    "checkpoint.best_mode": Choice(("min", "max")),
    "analysis.expert_threshold": Real(0.5, 1.0),
    "sample.captions": Sequence(Text(), may_be_empty=True),   # none: no sample grid
    "sample.images_per_caption": COUNT,
    # representation stages
    "encoder.datasets.*": WEIGHT,
    "encoder.caption_len": Int(1, 4096),
    "encoder.image.patch_size": Int(1, 1024),
    "encoder.*.width": WIDTH,
    "encoder.*.depth": COUNT,
    "encoder.*.num_heads": COUNT,
    "encoder.*.mlp_dim": WIDTH,
    "encoder.temperature_init": Real(0.0, 1e3, open="lo"),
    "encoder.bias_init": Real(-1e3, 1e3),
    "rae.encoder": Text(),
    "rae.datasets.*": WEIGHT,
    "rae.stats_batches": COUNT,
    "rae.decoder.width": WIDTH,
    "rae.decoder.depth": COUNT,
    "rae.decoder.num_heads": COUNT,
    "rae.decoder.mlp_dim": WIDTH,
    "rae.noise_tau": Real(0.0, 10.0),
    "rae.latent_channels": Int(0, MAX_SIZE),
    "rae.perceptual_weight": WEIGHT,
    "rae.gan_weight": WEIGHT,
    "rae.discriminator_width": WIDTH,
    "vae.datasets.*": WEIGHT,
    "vae.block_out_channels": Sequence(WIDTH),
    "vae.layers_per_block": COUNT,
    "vae.latent_channels": WIDTH,
    "vae.norm_num_groups": WIDTH,
    "vae.mid_attention": Flag(),
    "vae.kl_weight": WEIGHT,
    "vae.stats_batches": COUNT,
    "eval_representation.probe_datasets": Sequence(Text()),
    "eval_representation.held_out_images": COUNT,
    "eval_representation.probe_train_images": WIDTH,
    "eval_representation.probe_steps": Int(1, MAX_STEPS),
    "eval_representation.probe_learning_rate": Real(0.0, 10.0, open="lo"),
    "eval_representation.probe_weight_decay": Real(0.0, 10.0),
    "classifier.dataset": Text(),
    "classifier.num_classes": Int(2, MAX_SIZE),
    "classifier.widths": Sequence(WIDTH),
}


def leaves(config, prefix: str = ""):
  """(dotted key, value) for every leaf of a ConfigDict (lists and tuples are leaves)."""
  for name in config.keys():
    value, key = config[name], f"{prefix}{name}"
    if hasattr(value, "keys"):
      yield from leaves(value, key + ".")
    else:
      yield key, value


def rule_for(key: str):
  """The rule of `key`: its own entry, else the first pattern that matches it (or None)."""
  if key in RULES:
    return RULES[key]
  depth = key.count(".")
  for pattern, rule in RULES.items():
    if pattern.count(".") == depth and fnmatch.fnmatchcase(key, pattern):
      return rule
  return None


def check_values(config) -> None:
  """Every key with a rule holds a value the rule accepts (keys a config adds beyond the
  base schema, such as a sweep's `scaling` section, are checked where they are read)."""
  for key, value in leaves(config):
    rule = rule_for(key)
    if rule is not None:
      rule.check(key, value)
