"""The `mmpretrain` command: the only place that knows about flags, files and processes.

  mmpretrain prepare --config=configs/demo.py [--datasets=mnist_captions,emoji_captions]
  mmpretrain train   --config=configs/demo.py --workdir=runs/demo [--config.key=value ...]
                     [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]
  mmpretrain eval    --config=configs/demo.py --workdir=runs/demo [--step=N]
  mmpretrain sample  --config=configs/demo.py --workdir=runs/demo --prompt="ROMEO:" \
                     [--max_new_tokens=64 --temperature=0.8 --top_p=0.9]
  mmpretrain train-encoder --config=configs/stages/encoder_demo.py --workdir=runs/encoder
  mmpretrain train-rae --config=configs/stages/rae_demo.py --workdir=runs/rae \
                       --config.rae.encoder=runs/encoder/encoder
  mmpretrain train-vae --config=configs/stages/vae_demo.py --workdir=runs/vae
  mmpretrain eval-representation --config=configs/demo.py --workdir=runs/eval_rae \
      [--config.visual.representation=vae --config.visual.checkpoint=runs/vae/representation]
  mmpretrain analyze-experts --workdir=runs/moe [--windows=1] [--threshold=0.8]
  mmpretrain export-params --config=configs/demo.py --workdir=runs/demo [--step=N]
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mmpretrain import config as config_lib
from mmpretrain import distributed, hostalloc

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, samples, checkpoints).")
_WINDOWS = flags.DEFINE_integer("windows", 1, "analyze-experts: sum the routing counts of the "
                                "last N log intervals (0 = the whole run).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.8, "analyze-experts: text (vision) expert = "
                                "text affinity at least (at most 1 minus) this.")
_STEP = flags.DEFINE_integer("step", None, "eval, export-params: checkpoint step (default: "
                             "newest).")
_MULTIHOST = flags.DEFINE_enum("multihost", "auto", distributed.MODES, "train: 'auto' joins a "
                               "multi-process run from the coordinator flags, or on a TPU VM "
                               "from the pod itself; 'off' runs one process.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "train: HOST:PORT of process 0 "
                                   "of a multi-process run (not needed on TPU VMs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train: processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train: this process's index.")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "sample: text to continue (repeatable).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "sample: tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sample: 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "sample: nucleus sampling mass.")
_DATASETS = flags.DEFINE_list("datasets", None, "prepare: only these datasets (names in "
                              "config.data.datasets); default: every dataset the config reads.")


def _config():
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/demo.py")
  return config_lib.validate(_CONFIG.value)


def cmd_prepare():
  from mmpretrain.prepare import prepare  # pylint: disable=import-outside-toplevel
  prepare(_config(), _DATASETS.value)


def cmd_train():
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the directory that holds this run")
  distributed.initialize(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)
  from mmpretrain.train.loop import train  # pylint: disable=import-outside-toplevel
  summary = train(_config(), _WORKDIR.value)
  if not summary["is_main"]:
    return
  if summary["preempted"]:
    print("preempted: checkpoint saved; re-run the same command to resume")
    return
  if summary["last"] is None:
    print(f"{_WORKDIR.value} already holds the finished run (step {summary['resumed_from']})")
    return
  first, last = summary["first"], summary["last"]
  print(f"text loss: {first['text_loss']:.4f} (step 0) -> {last['text_loss']:.4f} "
        f"(step {last['step']})")
  print(f"flow loss: {first['flow_loss']:.4f} (step 0) -> {last['flow_loss']:.4f} "
        f"(step {last['step']})")
  print(f"text bits/byte: {first['text_bits_per_byte']:.3f} -> {last['text_bits_per_byte']:.3f}")
  if summary["eval"]:
    print("held-out (step {step}): ".format(**summary["eval"]) + ", ".join(
        f"{k} {v:.3f}" for k, v in summary["eval"].items() if k != "step"))
  if "samples" in summary:
    print(f"samples: {summary['samples']}")


def _workdir(stage: str) -> str:
  if not _WORKDIR.value:
    raise app.UsageError(f"--workdir is required: the directory {stage} writes into")
  return _WORKDIR.value


def cmd_eval():
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.train.evaluate import evaluate_checkpoint
  result = evaluate_checkpoint(_config(), _workdir("eval"), _STEP.value)
  for key, value in result.items():
    if key not in ("path", "split", "batches_per_stream"):
      print(f"{key}: {value}" if key == "step" else f"{key}: {value:.4f}")
  print(f"wrote {result['path']}")


def cmd_sample():
  """Continues --prompt texts with a checkpoint's parameters (KV-cached decoding)."""
  # pylint: disable=import-outside-toplevel
  import jax
  from mmpretrain import sample
  from mmpretrain.data.pipeline import load_tokenizer
  from mmpretrain.train.checkpoint import RunCheckpoints
  from mmpretrain.train.step import Trainer
  config, workdir = _config(), _workdir("sample")
  if not _PROMPTS.value:
    raise app.UsageError("--prompt is required (repeat it for several)")
  tok = load_tokenizer(config)
  trainer = Trainer(config, tok.byte_lengths())
  checkpoints = RunCheckpoints(workdir, config.checkpoint)
  step = checkpoints.latest_step() if _STEP.value is None else _STEP.value
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}: train first")
  params = checkpoints.restore(step, trainer.abstract_state()).params
  checkpoints.close()
  prompts = [[tok.bos_id] + tok.encode(p) for p in _PROMPTS.value]
  generate = sample.make_generator(trainer, _MAX_NEW.value, _TEMPERATURE.value, _TOP_P.value)
  generated = jax.device_get(generate(params, sample.text_prompt(trainer, prompts),
                                      jax.random.key(config.seed)))
  for prompt, ids in zip(prompts, generated):
    ids = [int(i) for i in ids]
    ids = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
    print(f"[step {step}] {tok.decode(prompt[1:] + ids)}")


def cmd_train_encoder():
  from mmpretrain.stages.encoder import train_encoder  # pylint: disable=import-outside-toplevel
  summary = train_encoder(_config(), _workdir("train-encoder"))
  print(f"sigmoid loss {summary['first']['loss']:.4f} -> {summary['last']['loss']:.4f}, "
        f"in-batch retrieval {summary['last']['retrieval_accuracy']:.3f}")
  if "digit_zero_shot_accuracy" in summary:
    print(f"zero-shot digit accuracy (held-out MNIST): "
          f"{summary['digit_zero_shot_accuracy']:.3f}")
  print(f"encoder: {summary['encoder']}")


def cmd_train_rae():
  from mmpretrain.stages.rae import train_rae  # pylint: disable=import-outside-toplevel
  summary = train_rae(_config(), _workdir("train-rae"))
  print(f"L1 {summary['first']['l1']:.4f} -> {summary['last']['l1']:.4f}; held-out "
        f"reconstruction PSNR {summary['validation_psnr']:.2f} dB; latent grid "
        f"{summary['latent_grid']}")
  print(f"representation: {summary['representation']} (config.visual.checkpoint)")


def cmd_train_vae():
  from mmpretrain.stages.vae import train_vae  # pylint: disable=import-outside-toplevel
  summary = train_vae(_config(), _workdir("train-vae"))
  print(f"L1 {summary['first']['l1']:.4f} -> {summary['last']['l1']:.4f}; held-out "
        f"reconstruction PSNR {summary['validation_psnr']:.2f} dB; latent grid "
        f"{summary['latent_grid']}, scaling factor {summary['scaling_factor']:.4f}")
  print(f"representation: {summary['representation']} (config.visual.checkpoint)")


def cmd_eval_representation():
  # pylint: disable=import-outside-toplevel
  import os
  from mmpretrain.stages.evaluation import evaluate_representation
  path = os.path.join(_workdir("eval-representation"), "representation_eval.json")
  result = evaluate_representation(_config(), path)
  for dataset, accuracy in result["linear_probe_accuracy"].items():
    print(f"{result['representation']} {result['latent_grid']} on {dataset}: held-out PSNR "
          f"{result['psnr_db'][dataset]:.2f} dB, linear probe accuracy {accuracy:.3f} "
          f"({result['held_out_images'][dataset]} images)")
  print(f"wrote {path}")


def cmd_analyze_experts():
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the directory of an MoE training run")
  from mmpretrain.analysis.experts import analyze  # pylint: disable=import-outside-toplevel
  result = analyze(_WORKDIR.value, _WINDOWS.value, _THRESHOLD.value)
  print(f"steps {result['steps'][0]}..{result['steps'][-1]}, threshold {result['threshold']}")
  print("layer  text  vision  multimodal  unused  und~gen r")
  for row in result["layers"]:
    print(f"{row['layer']:5d}  {row['text_experts']:4.2f}  {row['vision_experts']:6.2f}  "
          f"{row['multimodal_experts']:10.2f}  {row['unused_experts']:6.2f}  "
          f"{row['understanding_generation_r']:9.3f}")
  print(f"wrote {_WORKDIR.value}/analysis/experts.json and experts.png")


def cmd_export_params():
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the run whose checkpoint to export")
  # pylint: disable=import-outside-toplevel
  from mmpretrain.data.pipeline import load_tokenizer
  from mmpretrain.train.checkpoint import export_params
  from mmpretrain.train.step import Trainer
  config = _config()
  trainer = Trainer(config, load_tokenizer(config).byte_lengths())
  print(f"wrote {export_params(_WORKDIR.value, config.checkpoint, trainer, _STEP.value)}")


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "eval": cmd_eval, "sample": cmd_sample,
            "train-encoder": cmd_train_encoder,
            "train-rae": cmd_train_rae, "train-vae": cmd_train_vae,
            "eval-representation": cmd_eval_representation, "analyze-experts": cmd_analyze_experts,
            "export-params": cmd_export_params}


def _run(command):
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:   # Orbax logs every save at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      COMMANDS[command]()
    except (config_lib.ConfigError, FileNotFoundError, ValueError, ArithmeticError) as e:
      print(f"mmpretrain {command}: error: {e}", file=sys.stderr)
      sys.exit(2)
  return main


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(f"usage: mmpretrain {{{'|'.join(COMMANDS)}}} --config=FILE [--workdir=DIR] "
          "[--config.key=value ...]", file=sys.stderr)
    sys.exit(2)
  command = argv[1]
  if command.startswith("train"):
    hostalloc.relaunch_with_jemalloc()
  app.run(_run(command), argv=[f"mmpretrain {command}"] + argv[2:])


if __name__ == "__main__":
  main()
