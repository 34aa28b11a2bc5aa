"""Configs: command-line overrides, and bad values failing early with the key named."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest

import base
import demo
from mmpretrain import config as config_lib
from mmpretrain import config_rules
from mmpretrain.model.moe import expert_count
from mmpretrain.model.transformer import is_moe_layer
from mmpretrain.scaling.flops import active_matmul_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("get_config", [base.get_config, demo.get_config,
                                        lambda: base.get_config("runlocal")])
def test_shipped_configs_validate(get_config):
  config_lib.validate(get_config())


def config_module(relative: str):
  """The config file configs/<relative> as a module (get_config, and VARIANTS if any)."""
  path = os.path.join(ROOT, "configs", relative)
  spec = importlib.util.spec_from_file_location("_" + relative.replace("/", "_")[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("relative, arg", [
    ("stages/encoder_demo.py", None), ("stages/rae_demo.py", None), ("stages/vae_demo.py", None),
    ("ablations/visual_rep.py", "rae"), ("ablations/visual_rep.py", "vae"),
    ("ablations/visual_rep.py", "pixels")])
def test_stage_and_representation_configs_validate(relative, arg):
  config = config_lib.validate(config_module(relative).get_config(arg))
  if relative.startswith("ablations"):      # every arm: 64 latent tokens per 32×32 frame
    grid = {"rae": 8, "vae": 16, "pixels": 32}[arg]
    assert (grid // config.visual.patch_size) ** 2 == 64


def test_vocab_size_follows_the_tokenizer_setting():
  c = base.get_config()
  c.data.tokenizer.vocab_size = 1234
  assert c.model.vocab_size == 1234


@pytest.mark.parametrize("key, value, message", [
    ("model.num_kv_heads", 3, "config.model.num_kv_heads"),
    ("data.mixture", {"text": 1.0, "audio": 1.0}, "unknown stream"),
    ("data.mixture", {"text": 0.0}, "positive sum"),
    ("visual.patch_size", 5, "does not divide"),
    ("diffusion.prediction", "score", "config.diffusion.prediction"),
    ("optimizer.schedule", "linear", "config.optimizer.schedule"),
    ("optimizer.grad_accum_steps", 3, "does not divide data.batch_size"),
    ("data.streams.image_text.caption_dropout", 1.5,
     "config.data.streams.image_text.caption_dropout"),
    ("data.streams.text.datasets", {"wikipedia": 1.0}, "unknown dataset"),
    ("data.mixture.action_video", 1.0, "holds 5 frames but a row holds data.max_frames=4"),
    ("checkpoint.best_metric", "text/text_loss", "needs held-out evaluations"),
    ("checkpoint.best_mode", "lowest", "config.checkpoint.best_mode"),
    ("data.shards", 3, "does not divide data.batch_size"),
    ("data.num_workers", -1, "config.data.num_workers"),

    ("model.remat", "some", "config.model.remat"),
])
def test_bad_values_name_the_key(key, value, message):
  c = base.get_config()
  *parents, name = key.split(".")
  node = c
  for parent in parents:
    node = node[parent]
  node[name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "mmpretrain.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_rejects_unknown_key():
  out = run_cli("prepare", "--config=configs/demo.py", "--config.model.num_layerz=3")
  assert out.returncode != 0
  assert "num_layerz" in out.stderr


def test_cli_rejects_wrong_type():
  out = run_cli("prepare", "--config=configs/demo.py", "--config.model.num_layers=deep")
  assert out.returncode != 0
  assert "num_layers" in out.stderr


def test_cli_reports_validation_errors_cleanly():
  out = run_cli("prepare", "--config=configs/demo.py", "--config.model.num_kv_heads=3")
  assert out.returncode == 2
  assert "config.model.num_kv_heads" in out.stderr and "Traceback" not in out.stderr


def test_cli_without_command_prints_usage():
  out = run_cli()
  assert out.returncode == 2 and "usage: mmpretrain" in out.stderr


def test_command_line_overrides_reach_the_config(tmp_path, data_dir):
  # The override of data_dir and tokenizer.vocab_size decides where prepare looks and what
  # size it checks; the session tokenizer (512 ids) copied there is accepted as is.
  import shutil  # pylint: disable=import-outside-toplevel
  from mmpretrain.data.pipeline import tokenizer_path  # pylint: disable=import-outside-toplevel
  c = demo.get_config()
  c.data.data_dir, c.data.tokenizer.vocab_size = str(tmp_path), 512
  shutil.copy(os.path.join(data_dir, "tokenizer_512.model"), tokenizer_path(c))
  out = run_cli("prepare", "--config=configs/demo.py", f"--config.data.data_dir={tmp_path}",
                "--config.data.tokenizer.vocab_size=512")
  assert out.returncode == 0, out.stderr
  assert f"tokenizer ready: {tokenizer_path(c)} (512 ids)" in out.stdout


@pytest.mark.parametrize("key, value, message", [
    ("granularity", 5, "config.model.moe.granularity: granularity=5 does not divide"),
    ("router", "hash", "config.model.moe.router"),
    ("experts_per_token", 9, "config.model.moe.experts_per_token"),
    ("first_dense_layers", 99, "config.model.moe.first_dense_layers"),
])
def test_bad_moe_values_name_the_key(key, value, message):
  c = base.get_config()
  c.model.moe.num_experts = 8
  config_lib.validate(c)                           # a valid MoE config …
  c.model.moe[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):   # … broken by one key
    config_lib.validate(c)


ABLATIONS = ("ffn_type", "granularity", "total_experts", "shared_experts")


def ablation_variants(name):
  module = config_module(f"ablations/{name}.py")
  return module.get_config, module.VARIANTS


@pytest.mark.parametrize("name", ABLATIONS)
@pytest.mark.parametrize("suffix", ["", ",runlocal"])
def test_ablation_variants_validate_at_equal_active_ffn_flops(name, suffix):
  """Every variant of an ablation multiplies the same FFN parameters per token (routers
  aside, whose d × E is the cost of having experts at all)."""
  get_config, variants = ablation_variants(name)
  active = set()
  for variant in variants:
    c = config_lib.validate(get_config(variant + suffix))
    m = c.model
    moe_layers = sum(is_moe_layer(m, i) for i in range(m.num_layers))
    routers = moe_layers * m.d_model * expert_count(m.moe) if m.moe.num_experts else 0
    active.add(active_matmul_params(c) - routers)
  assert len(active) == 1, (name, active)


def test_ablation_arg_outside_its_variants_names_them():
  get_config, _ = ablation_variants("granularity")
  with pytest.raises(ValueError, match=r"use one of \['1', '2', '4', '8', '16'\]"):
    get_config("3")


def set_key(config, key: str, value) -> None:
  *parents, name = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[name] = value


def probes(value) -> list:
  """Zero, a negative and an absurd value of the key's own type; a made-up name for text."""
  if isinstance(value, bool):
    return []
  if isinstance(value, int):
    return [0, -1, 10**12]
  if isinstance(value, float):
    return [0.0, -1.0, 1e12]
  if isinstance(value, str):
    return ["no-such-value"]
  return []


BASE_KEYS = [key for key, _ in config_rules.leaves(base.get_config())]


def test_every_key_of_the_base_config_has_a_rule():
  """A key added to configs/base.py without a rule in config_rules.RULES fails here."""
  assert [k for k in BASE_KEYS if config_rules.rule_for(k) is None] == []


@pytest.mark.parametrize("key", BASE_KEYS)
def test_zero_negative_and_absurd_values_work_or_are_refused_by_name(key):
  default = dict(config_rules.leaves(base.get_config()))[key]
  if default is None:                 # a placeholder: probe with values of its type
    *parents, name = key.split(".")
    node = base.get_config()
    for parent in parents:
      node = node[parent]
    default = node.get_ref(name).get_type()()
  for value in probes(default):
    c = base.get_config()
    set_key(c, key, value)
    try:
      config_lib.validate(c)
    except config_lib.ConfigError as e:
      message = str(e)
      assert "\n" not in message, message
      assert message.startswith("config."), message
      named = message.split(":", 1)[0].removeprefix("config.")
      config_lib.check_key_exists(c, named)     # the key itself, or the one to change with it
      continue
    rule = config_rules.rule_for(key)
    if isinstance(rule, config_rules.Text):
      continue                                  # paths and names are checked where opened
    assert value not in (10**12, 1e12) or isinstance(rule, config_rules.Real) and \
        rule.hi == math.inf, f"config.{key}={value} was accepted"


@pytest.mark.parametrize("key, value, accepted", [
    ("optimizer.grad_clip_norm", 0.0, True),         # no clipping
    ("optimizer.weight_decay", 0.0, True),
    ("optimizer.warmup_steps", 0, True),
    ("eval.every_steps", 0, True), ("checkpoint.every_steps", 0, True),
    ("mesh.data", -1, True), ("model.moe.num_experts", 0, True),
    ("diffusion.cfg_scale", 0.0, True), ("loss.flow_weight", 1e12, True),
    ("optimizer.learning_rate", 0.0, False), ("optimizer.learning_rate", 1e12, False),
    ("optimizer.eps", 0.0, False), ("diffusion.min_t", 0.0, False),
    ("optimizer.b2", 1.0, False), ("mesh.data", 0, False), ("data.seq_len", 10**12, False),
    ("train.num_steps", -1, False), ("optimizer.weight_decay", 11.0, False),
    ("diffusion.time_shift", 0.0, False), ("data.image_channels", 2, False),
])
def test_values_whose_meaning_matters(key, value, accepted):
  c = base.get_config()
  set_key(c, key, value)
  if accepted:
    config_lib.validate(c)
  else:
    with pytest.raises(config_lib.ConfigError, match=f"^config.{key}: "):
      config_lib.validate(c)


@pytest.mark.parametrize("override, message", [
    ("--config.model.d_modle=3", 'config.model.d_modle: no such key (did you mean "model.d_model"?)'),
    ("--config.optimzer.learning_rate=1", 'config.optimzer.learning_rate: no such key (did you mean "optimizer"?)'),
])
def test_unknown_keys_are_refused_in_one_line(override, message):
  result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mmpretrain"), "eval",
                           "--config=configs/demo.py", override],
                          cwd=ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [f"mmpretrain eval: error: {message}. Fix the "
                                                "spelling, or add the key to the config file's "
                                                "get_config()"]


def test_the_eval_batch_must_split_into_the_data_shards():
  c = base.get_config()
  c.data.batch_size, c.data.shards, c.eval.batch_size = 8, 4, 6
  with pytest.raises(config_lib.ConfigError,
                     match="^config.eval.batch_size: 6 rows do not split into data.shards=4"):
    config_lib.validate(c)
  c.eval.batch_size = 12
  config_lib.validate(c)


def test_every_remat_choice_names_a_jax_policy():
  from mmpretrain import config_rules  # pylint: disable=import-outside-toplevel
  from mmpretrain.model import transformer  # pylint: disable=import-outside-toplevel
  assert transformer.remat_policy("none") is None
  for name in set(config_rules.REMAT_POLICIES) - {"none"}:
    assert callable(transformer.remat_policy(name)), name


def test_train_tokens_sets_the_steps_rounded_up_and_never_beside_num_steps():
  c = base.get_config()
  per_step = 8 * 512                      # base: 8 rows of 512 token positions
  assert (c.data.batch_size, c.data.seq_len) == (8, 512)
  c.train.num_steps, c.optimizer.warmup_steps = 0, 2
  for tokens, steps in ((per_step * 1000.0, 1000), (per_step * 1000.0 + 1, 1001),
                        (5.2e11, 126_953_125)):
    c.train.tokens = tokens
    assert config_lib.train_steps(config_lib.validate(c)) == steps
  c.train.num_steps = 5
  with pytest.raises(config_lib.ConfigError, match=r"^config\.train\.tokens: 5\.2e\+11 tokens "
                     r"and train\.num_steps=5 both set the run's length\. .*num_steps=0.*"
                     r"tokens=0"):
    config_lib.validate(c)
  c.train.tokens = 0.0                    # steps alone, as before
  assert config_lib.train_steps(config_lib.validate(c)) == 5
  c.optimizer.warmup_steps, c.train.num_steps, c.train.tokens = 200, 0, per_step * 150.0
  with pytest.raises(config_lib.ConfigError, match=r"^config\.optimizer\.warmup_steps: warmup "
                     r"\(200\) must be shorter than the run's 150 steps"):
    config_lib.validate(c)
  c.train.tokens = per_step * 2.0**32
  with pytest.raises(config_lib.ConfigError, match=r"^config\.train\.tokens: .* 4294967296 "
                     "steps"):
    config_lib.validate(c)
