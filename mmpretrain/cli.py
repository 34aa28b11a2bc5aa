"""The `mmpretrain` command: the only place that knows about flags, files and processes.

`mmpretrain --help` lists the verbs; `mmpretrain VERB --help` shows one verb's usage, its
flags with their defaults, and an example (the VERBS table below).
"""
import dataclasses
import os
import re
import sys
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mmpretrain import config as config_lib
from mmpretrain import distributed, hostalloc, storage
from mmpretrain.data import records


class _NoneOr(flags.ArgumentParser):
  """`parser`, and `None` for None: a number whose None means "automatic" (such as
  diffusion.time_shift) can be set back to it with --config.<key>=None."""

  def __init__(self, parser: flags.ArgumentParser):
    self._parser = parser

  def parse(self, argument):
    return None if argument == "None" else self._parser.parse(argument)

  def flag_type(self):
    return self._parser.flag_type()


config_flags.register_flag_parser_for_type(int, _NoneOr(flags.IntegerParser()))
config_flags.register_flag_parser_for_type(float, _NoneOr(flags.FloatParser()))
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, samples, checkpoints).")
_WINDOWS = flags.DEFINE_integer("windows", 1, "analyze-experts: sum the routing counts of the "
                                "last N log intervals (0 = the whole run).")
_THRESHOLD = flags.DEFINE_float("threshold", 0.8, "analyze-experts: text (vision) expert = "
                                "text affinity at least (at most 1 minus) this.")
_STEP = flags.DEFINE_integer("step", None, "eval, export-params: checkpoint step (default: "
                             "newest).")
_MULTIHOST = flags.DEFINE_enum("multihost", "auto", distributed.MODES, "train, stages, "
                               "prepare, eval, sample: 'auto' joins a multi-process run from "
                               "the coordinator flags, or on a TPU VM from the pod itself; "
                               "'off' runs one process.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "train, stages, prepare, "
                                   "eval, sample: HOST:PORT of process 0 of a multi-process "
                                   "run (not needed on TPU VMs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train, stages, prepare, "
                                     "eval, sample: processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train, stages, prepare, "
                                   "eval, sample: this process's index.")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "sample: text to continue (repeatable).")
_CAPTIONS = flags.DEFINE_multi_string("caption", None, "sample: draw images of this caption "
                                      "(repeatable).")
_PER_CAPTION = flags.DEFINE_integer("images_per_caption", 4, "sample: images per --caption "
                                     "or --prompts prompt.")
_PROMPT_FILE = flags.DEFINE_string("prompts", None, "sample: draw images for a benchmark's "
                                   "prompts (GenEval's .jsonl, DPG-Bench's folder of .txt, or "
                                   "one a line) into --output in its scorer's layout.")
_PROMPT_LAYOUT = flags.DEFINE_string("prompt_layout", "auto", "sample: geneval | dpg | auto "
                                     "(dpg for a folder of prompts, else geneval).")
_PROMPTS_PER_BATCH = flags.DEFINE_integer("prompts_per_batch", 8, "sample: --prompts drawn "
                                          "together (times --images_per_caption rows).")
_IMAGES = flags.DEFINE_multi_string("image", None, "sample: caption this image file "
                                    "(repeatable).")
_DOCUMENTS = flags.DEFINE_multi_string("document", None, "sample: continue this text as an "
                                       "interleaved document (text and images, repeatable).")
_BEGIN_IMAGE = flags.DEFINE_boolean("begin_image", False, "sample: --document texts are "
                                    "captions: append <boi> and draw their image first.")
_ROLLOUTS = flags.DEFINE_integer("rollouts", 0, "sample: roll out this many held-out MiniGrid "
                                 "episodes (GIFs: the truth above the prediction).")
_HORIZON = flags.DEFINE_integer("horizon", 8, "sample: frames predicted per rollout.")
_ACTIONS = flags.DEFINE_boolean("actions", True, "sample: condition rollouts on the episodes' "
                                "actions; --noactions continues them as video.")
_OUT = flags.DEFINE_string("out", None, "sweep, study --run: the runs' directory (plan.json, "
                           "runs/, results.jsonl).")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "tpu"], "sweep, study --run: run "
                              "here one after another, or print the TPU launcher commands.")
_RESULTS = flags.DEFINE_string("results", None, "fit, study: a sweep's results.jsonl (study "
                                "also takes the directory that holds it).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "fit: bootstrap resamples for the "
                                  "confidence intervals.")
_METRICS = flags.DEFINE_list("metrics", None, "fit: modality=section.metric pairs (default "
                             "text=eval.text/text_loss,vision=eval.image_text/flow_loss).")
_LIST = flags.DEFINE_boolean("list", False, "study: name every experiment of the paper, one "
                             "line each.")
_SCALE = flags.DEFINE_string("scale", "paper", "study: paper (configs/paper/) or mini (a "
                             "CPU-sized base).")
_PLAN = flags.DEFINE_boolean("plan", False, "study: print the experiment's runs: overrides, "
                             "parameters, tokens, FLOPs, topology.")
_REPORT = flags.DEFINE_boolean("report", False, "study: the experiment's figure and table from "
                               "the results in --results.")
_COMPILE = flags.DEFINE_boolean("compile", False, "study: compile each distinct step of the "
                                "experiment's runs for --topology (default: the base config's).")
_RUN = flags.DEFINE_boolean("run", False, "study: train the runs not yet in --out (or print "
                            "their TPU launches, --launcher=tpu), then draw the report there.")
_OUTPUT = flags.DEFINE_string("output", None, "sample: folder for PNGs and GIFs (default "
                              "<workdir>/samples).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "sample: tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sample: 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "sample: nucleus sampling mass.")
_DATASETS = flags.DEFINE_list("datasets", None, "prepare: only these datasets (names in "
                              "config.data.datasets); default: every dataset the config reads.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "compile, study --compile: the TPU slice, "
                                "as GCP names it (v5p-128, v5e-16, v6e-256) or "
                                "generation:shape (v5p:4x4x4).")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "compile: slices joined over DCN "
                                   "(config.mesh.dcn_data splits the data axis over them).")
_REBUILD = flags.DEFINE_boolean("rebuild", False, "prepare: write the datasets anew even where "
                                "they exist (mends a copy whose records cannot be read).")
_CHECK = flags.DEFINE_boolean("check", False, "prepare: write nothing; exit 1 unless every "
                              "dataset and the tokenizer the config reads are there.")
_LATENTS = flags.DEFINE_boolean("latents", True, "prepare: with visual.cached_latents, also "
                                "encode the latent cache on every process of the job "
                                "(--nolatents: datasets and tokenizer only, one process).")
_RUNNER = flags.DEFINE_string("runner", "local", "prepare: the Beam runner that converts "
                               "datasets with a `source`: local (this machine, "
                               "source.workers processes), DataflowRunner, FlinkRunner, "
                               "SparkRunner or PortableRunner; its pipeline options follow "
                               "`--` (docs/data.md).")
_REAL = flags.DEFINE_string("real", None, "fid: the reference images, a folder or a .npz "
                            "of FID statistics (mu, sigma).")
_FAKE = flags.DEFINE_string("fake", None, "fid: the images to score, a folder or a .npz of "
                            "FID statistics; clip-score: the geneval-layout output of "
                            "`sample --prompts`.")
_SIGLIP = flags.DEFINE_string("siglip", None, "clip-score: a SigLIP or SigLIP 2 checkpoint "
                              "directory with both towers and tokenizer.json (local or gs://).")
_INCEPTION = flags.DEFINE_string("inception", None, "fid: pytorch-fid's Inception weights, "
                                 "pt_inception-2015-12-05-6726825d.pth (local or gs://).")
_SAVE_STATS = flags.DEFINE_string("save_stats", None, "fid: write the --real folder's "
                                  "statistics to this new .npz (then --fake is optional).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 50, "fid, clip-score: images per batch.")
_PROGRAM = flags.DEFINE_enum("program", "train", ["train", "latent_cache", "train_rae", "eval",
                                                "sample"],
                             "compile: the train step, the latent cache's encode step "
                             "(`prepare` with visual.cached_latents), the RAE decoder's "
                             "train step (`train-rae`), the held-out loss step (`eval`) or "
                             "the image sampler's denoising step (`sample`), the last two "
                             "for eval.batch_size rows.")


def _config(of_run: bool = False):
  """The --config file's config. `of_run`: a verb that reads a trained run, which without
  --config uses the run's own config.json (every override it trained with included)."""
  if _CONFIG.value is not None:
    return config_lib.validate(_CONFIG.value)
  if of_run and _WORKDIR.value:
    path = storage.join(_WORKDIR.value, "config.json")
    if storage.exists(path):
      return config_lib.validate(ml_collections.ConfigDict(storage.read_json(path)))
    raise app.UsageError(f"no {path}: give the run's --config=FILE and its overrides")
  raise app.UsageError("--config is required, e.g. --config=configs/demo.py")


# `mmpretrain prepare … -- OPTIONS`: the Beam pipeline options after `--`, untouched.
_PIPELINE_ARGS: list[str] = []


def _beam_runner():
  """The runner of `prepare`'s Beam pipelines, refused before any work if unusable."""
  from mmpretrain.data.convert import runners  # pylint: disable=import-outside-toplevel
  runners.check_runner(_RUNNER.value, _PIPELINE_ARGS)
  return runners.Runner(_RUNNER.value, tuple(_PIPELINE_ARGS))


def cmd_prepare():
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.data.prepare import NotReady, check_prepared, prepare
  if _CHECK.value:
    try:
      for path in check_prepared(_config()):
        print(f"ready: {path}")
    except NotReady as e:
      print(e, file=sys.stderr)
      sys.exit(1)
    return
  config, runner = _config(), _beam_runner()
  if not (config.visual.cached_latents and _LATENTS.value):
    prepare(config, _DATASETS.value, _REBUILD.value, runner)
    return
  # Every process of a multi-host job encodes its share of the latent cache.
  _join_job()
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.stages.latent_cache import prepare_with_latents
  result = prepare_with_latents(config, _DATASETS.value, _REBUILD.value, runner)
  if result["process"] == 0:
    for path in result["caches"]:
      print(f"latents ready: {path}")


_PREEMPTED = "preempted: checkpoint saved; re-run the same command to resume"


def _join_job() -> None:
  distributed.initialize(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                         _PROCESS_ID.value)


def cmd_train(config=None):
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the directory that holds this run")
  config = config or _config()
  _join_job()
  from mmpretrain.train.loop import train  # pylint: disable=import-outside-toplevel
  summary = train(config, _WORKDIR.value)
  if not summary["is_main"]:
    return
  if summary["preempted"]:
    print(_PREEMPTED)
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
  # pylint: disable=import-outside-toplevel
  import jax
  from mmpretrain.train.evaluate import evaluate_checkpoint
  config, workdir = _config(of_run=True), _workdir("eval")
  _join_job()
  result = evaluate_checkpoint(config, workdir, _STEP.value)
  if jax.process_index() != 0:
    return
  for key, value in result.items():
    if key not in ("path", "split", "batches_per_stream"):
      print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
  print(f"wrote {result['path']}")


def _grid_name(step: int, process: int, processes: int) -> str:
  """The caption grid a process writes: the whole grid's name when it is the only one."""
  return f"captions_step{step}.png" if processes == 1 else \
      f"captions_step{step}_process{process}.png"


def cmd_sample():
  """Text continuation, images from captions, captions of image files and world-model
  rollouts with a checkpoint's parameters, on the config's mesh over every process of the
  job. Each process writes the caption images its devices drew; process 0 prints, writes
  the rest and <output>/sample_step<N>.json (what was sampled, where it went)."""
  # pylint: disable=import-outside-toplevel
  import jax
  from mmpretrain import sharding
  from mmpretrain.generate import sample
  from mmpretrain.train.evaluate import restore_params
  config, workdir = _config(of_run=True), _workdir("sample")
  if not (_PROMPTS.value or _CAPTIONS.value or _IMAGES.value or _ROLLOUTS.value
          or _DOCUMENTS.value or _PROMPT_FILE.value):
    raise app.UsageError("say what to sample: --prompt, --caption, --image, --document, "
                         "--prompts or --rollouts")
  if _PROMPT_FILE.value:
    return _export_prompts(config, workdir)
  _join_job()
  mesh = sharding.make_mesh(config.mesh)
  tok, run, params, step = restore_params(config, workdir, _STEP.value, mesh)
  process, processes = jax.process_index(), jax.process_count()
  main = process == 0
  say = print if main else (lambda *_: None)
  output = _OUTPUT.value or storage.join(workdir, "samples")
  storage.makedirs(output)
  record = {"step": step, "num_devices": mesh.size, "mesh_shape": dict(mesh.shape)}
  if _PROMPTS.value:
    record["continuations"] = sample.continue_texts(
        run, tok, params, _PROMPTS.value, _MAX_NEW.value, _TEMPERATURE.value, _TOP_P.value,
        config.seed)
    for text in record["continuations"]:
      say(f"[step {step}] {text}")
  if _IMAGES.value:
    record["image_captions"] = dict(zip(_IMAGES.value, sample.caption_files(
        run, tok, params, _IMAGES.value, _MAX_NEW.value)))
    for path, caption in record["image_captions"].items():
      say(f"[step {step}] {path}: {caption}")
  if _CAPTIONS.value:
    per_caption = _PER_CAPTION.value
    drawn = sample.draw_captions(run, tok, params, _CAPTIONS.value, per_caption, config.seed)
    grid = sample.local_grid(drawn, per_caption)
    if grid is not None:
      storage.save_image(storage.join(output, _grid_name(step, process, processes)), grid)
    record["caption_grids"] = {
        storage.join(output, _grid_name(step, p, processes)): rows
        for p in range(processes) if (rows := drawn.rows_of(p))}
    for path, rows in record["caption_grids"].items():
      say(f"wrote {path} (a row per caption: images {rows[0]}..{rows[-1]} of "
          f"{drawn.count}, {per_caption} a caption)")
  if _DOCUMENTS.value:
    from mmpretrain.generate.interleaved import InterleavedSampler, write_document
    sampler = InterleavedSampler(run, tok, _MAX_NEW.value, _TEMPERATURE.value, _TOP_P.value)
    record["documents"] = []
    for i, text in enumerate(_DOCUMENTS.value):
      segments = sampler(params, text, jax.random.key(config.seed + i), _BEGIN_IMAGE.value)
      if main:
        record["documents"].append(
            text + write_document(segments, output, f"document_step{step}_{i}"))
        say(f"[step {step}] {record['documents'][-1]}")
  if _ROLLOUTS.value:
    from mmpretrain.generate.world_model import write_rollouts
    record["rollouts"] = write_rollouts(config, tok, run, params, _ROLLOUTS.value,
                                        _HORIZON.value, _ACTIONS.value, output, f"step{step}",
                                        write=main)
    for path in record["rollouts"]:
      say(f"wrote {path}")
  if main:
    path = storage.join(output, f"sample_step{step}.json")
    storage.write_json(path, record)
    say(f"wrote {path}")


def _export_prompts(config, workdir: str) -> None:
  """`sample --prompts`: a benchmark's prompts drawn into its scorer's layout."""
  # pylint: disable=import-outside-toplevel
  import json
  from mmpretrain import sharding
  from mmpretrain.generate import prompt_export
  from mmpretrain.train.evaluate import restore_params
  layout = _PROMPT_LAYOUT.value
  if layout not in prompt_export.LAYOUTS:
    raise app.UsageError(f"--prompt_layout={layout}: use one of {prompt_export.LAYOUTS}")
  prompts = prompt_export.read_prompts(_PROMPT_FILE.value)
  layout = prompt_export.resolve_layout(layout, _PROMPT_FILE.value)
  output = _OUTPUT.value or prompt_export.default_output(workdir, _PROMPT_FILE.value)
  writer = prompt_export.make_layout(layout, output, _PER_CAPTION.value)
  _join_job()
  mesh = sharding.make_mesh(config.mesh)
  tok, run, params, step = restore_params(config, workdir, _STEP.value, mesh)
  counts = prompt_export.export_prompts(run, tok, params, prompts, writer, _PER_CAPTION.value,
                                        _PROMPTS_PER_BATCH.value, config.seed)
  print(json.dumps({"step": step, "layout": layout, "output": output, **counts}))


def cmd_finetune():
  """`train` from a pretrained run's parameters (config.train.init_from), with a fresh
  optimizer: the config names the fine-tuning data (e.g. the vqa stream)."""
  config = _config()
  source = config.train.init_from
  if not source:
    raise app.UsageError("finetune starts from a pretrained run: pass "
                         "--config.train.init_from=<its workdir>")
  if _WORKDIR.value and storage.absolute(source) == storage.absolute(_WORKDIR.value):
    raise app.UsageError(f"--workdir={_WORKDIR.value} is the pretrained run itself: give the "
                         "fine-tuned run a workdir of its own")
  cmd_train(config)


def _train_stage(verb: str, train_stage) -> dict | None:
  """Runs a representation stage on every process of the job (resuming from the newest
  checkpoint in --workdir); its summary on process 0 once it has finished, else None."""
  workdir = _workdir(verb)
  _join_job()
  summary = train_stage(_config(), workdir)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() != 0:
    return None
  if summary["preempted"]:
    print(_PREEMPTED)
    return None
  return summary


def _trained(summary: dict, key: str) -> str:
  """Metric `key` from this invocation's first log to its last."""
  first, last = summary["first"], summary["last"]
  if last is None:
    return f"(trained before: step {summary['resumed_from']})"
  return f"{first[key]:.4f} -> {last[key]:.4f} (step {last['step']})"


def cmd_train_encoder():
  from mmpretrain.stages.encoder import train_encoder  # pylint: disable=import-outside-toplevel
  summary = _train_stage("train-encoder", train_encoder)
  if summary is None:
    return
  print(f"sigmoid loss {_trained(summary, 'loss')}, in-batch retrieval "
        f"{_trained(summary, 'retrieval_accuracy')}")
  if "digit_zero_shot_accuracy" in summary:
    print(f"zero-shot digit accuracy (held-out MNIST): "
          f"{summary['digit_zero_shot_accuracy']:.3f}")
  print(f"encoder: {summary['encoder']}")


def cmd_train_classifier():
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.stages.classifier import train_classifier
  summary = _train_stage("train-classifier", train_classifier)
  if summary is None:
    return
  print(f"cross-entropy {_trained(summary, 'loss')}; "
        f"held-out accuracy on real images {summary['held_out_accuracy']:.3f}")
  print(f"classifier: {summary['classifier']} (config.eval.classifier)")


def cmd_train_rae():
  from mmpretrain.stages.rae import train_rae  # pylint: disable=import-outside-toplevel
  summary = _train_stage("train-rae", train_rae)
  if summary is None:
    return
  print(f"L1 {_trained(summary, 'l1')}; held-out "
        f"reconstruction PSNR {summary['validation_psnr']:.2f} dB; latent grid "
        f"{summary['latent_grid']}")
  print(f"representation: {summary['representation']} (config.visual.checkpoint)")


def cmd_train_vae():
  from mmpretrain.stages.vae import train_vae  # pylint: disable=import-outside-toplevel
  summary = _train_stage("train-vae", train_vae)
  if summary is None:
    return
  print(f"L1 {_trained(summary, 'l1')}; held-out "
        f"reconstruction PSNR {summary['validation_psnr']:.2f} dB; latent grid "
        f"{summary['latent_grid']}, scaling factor {summary['scaling_factor']:.4f}")
  print(f"representation: {summary['representation']} (config.visual.checkpoint)")


def cmd_eval_representation():
  # pylint: disable=import-outside-toplevel
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


def cmd_analyze_generation():
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.analysis.latents import analyze
  result = analyze(_config(of_run=True), _workdir("analyze-generation"))
  for key, value in result.items():
    print(f"{key}: {value}" if isinstance(value, int) else f"{key}: {value:.3f}")
  print(f"wrote {_WORKDIR.value}/analysis/latents.json and latents.png")


def cmd_sweep():
  """Expands an IsoFLOP config (a `scaling` section) or an ablation config (VARIANTS) into
  runs and runs them here or prints their TPU launches."""
  # pylint: disable=import-outside-toplevel
  from mmpretrain.scaling import sweep
  if not _OUT.value:
    raise app.UsageError("--out is required: the sweep's directory")
  config_flag = flags.FLAGS["config"]
  config_arg = config_flags.get_config_filename(config_flag)
  config = _config()
  if "scaling" in config:
    runs = sweep.isoflop_plan(config, config_arg)
  else:
    runs = sweep.ablation_plan(config_arg)
  results = sweep.run_sweep(runs, _OUT.value, _LAUNCHER.value,
                            config_flags.get_override_values(config_flag))
  if _LAUNCHER.value == "local":
    print(f"{len(results)}/{len(runs)} runs in {_OUT.value}/results.jsonl")


def cmd_fit():
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.scaling.fit import write_fit
  if not _RESULTS.value:
    raise app.UsageError("--results is required: a sweep's results.jsonl")
  metrics = None
  if _METRICS.value:
    metrics = dict(pair.split("=", 1) for pair in _METRICS.value)
  fit = write_fit(_RESULTS.value, metrics, _BOOTSTRAP.value)
  for name, m in fit["modalities"].items():
    print(f"{name} ({m['metric']}): N_opt ∝ C^{m['n_opt_exponent']:.3f} "
          f"[{m['n_opt_ci95'][0]:.3f}, {m['n_opt_ci95'][1]:.3f}], D_opt ∝ "
          f"C^{m['d_opt_exponent']:.3f} [{m['d_opt_ci95'][0]:.3f}, {m['d_opt_ci95'][1]:.3f}] "
          f"over {len(m['optima'])} budgets")
  print(f"wrote {fit['out']}/fit.json, fit.md, isoflops.png, optima.png")


# `mmpretrain study NAME …`: the experiment named before or between the flags.
_NAMES: list[str] = []


def cmd_study():
  """Lists the paper's experiments; or, for one at a scale, prints its runs, compiles its
  steps, runs or launches them, or reports their results. A plan with arms that cannot run
  yet, and a step that does not compile or fit, exit 3 after saying why."""
  # pylint: disable=import-outside-toplevel
  from mmpretrain.study import listing, registry
  from mmpretrain.study.plan import plan
  actions = _PLAN.value or _COMPILE.value or _RUN.value or _REPORT.value
  if _LIST.value:
    if _NAMES or actions:
      raise app.UsageError("--list lists every experiment: give no NAME or other action")
    print("\n".join(listing.experiment_lines()))
    return
  if not actions:
    raise app.UsageError("say what to do: --list, or NAME with --plan, --compile, "
                         "--run --out=DIR or --report --results=DIR")
  if len(_NAMES) != 1:
    raise app.UsageError(f"name one experiment, got {_NAMES or 'none'}: mmpretrain study NAME "
                         "--plan (mmpretrain study --list names them)")
  experiment = registry.experiment(_NAMES[0])
  registry.check_scale(_SCALE.value)
  if _REPORT.value and not _RESULTS.value:
    raise app.UsageError("--report needs --results=DIR: the study's results directory")
  if _RUN.value and not _OUT.value:
    raise app.UsageError("--run needs --out=DIR: where the runs and their results go")
  planned = plan(experiment, _SCALE.value)
  failed = []
  if _PLAN.value:
    print("\n".join(listing.plan_lines(planned)))
  if _COMPILE.value:
    failed += _study_compile(planned)
  if _RUN.value:
    from mmpretrain.scaling.sweep import run_sweep
    run_sweep(planned.runs, _OUT.value, _LAUNCHER.value)
    if _LAUNCHER.value == "local":
      _study_report(planned, _OUT.value)
  if _REPORT.value:
    results = _RESULTS.value
    _study_report(planned, storage.parent(results) if results.endswith(".jsonl") else results)
  if (_PLAN.value or _RUN.value) and planned.refused:
    failed.append(f"{experiment.name} has arms that cannot run yet ("
                  f"{', '.join(a.name for a in planned.refused)}): the plan says what each "
                  "needs")
  if failed:
    print(f"mmpretrain study: error: {'; '.join(failed)}", file=sys.stderr)
    sys.exit(3)


def _study_compile(planned) -> list[str]:
  """Compiles the plan's distinct steps and prints their table; what failed, if any."""
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.study.compile import compile_plan, fits, table_lines
  results = compile_plan(planned, _TOPOLOGY.value or "")
  print("\n".join(table_lines(planned, results)))
  bad = [", ".join(r["runs"]) for r in results if not fits(r)]
  return [f"{'; '.join(bad)} did not compile or fit: the table says why"] if bad else []


def _study_report(planned, results: str) -> None:
  # pylint: disable-next=import-outside-toplevel
  from mmpretrain.study.report import write_report
  report = write_report(planned, results)
  missing = [r["run"] for r in report["rows"] if r["status"] != "ok"]
  print(f"{len(report['rows']) - len(missing)} of {len(report['rows'])} runs reported"
        + (f"; no results for {', '.join(missing)}" if missing else ""))
  print(f"wrote {report['table']} and {report['figure']}")


def cmd_compile():
  """Compiles the train step (or, with --program=latent_cache, the latent cache's encode
  step; with --program=train_rae, the RAE decoder's train step; with eval or sample, the
  held-out loss step or the sampler's denoising step) for a TPU topology on this
  machine (libtpu, no TPU) and prints its memory per chip and the TPU cost model's time as
  one JSON line."""
  # pylint: disable=import-outside-toplevel
  import json
  from mmpretrain.train import aot
  if not _TOPOLOGY.value:
    raise app.UsageError("--topology is required, e.g. --topology=v5p-128")
  config = _config()
  try:
    if _PROGRAM.value == "latent_cache":
      result = aot.latent_cache_report(config, _TOPOLOGY.value, _NUM_SLICES.value)
    elif _PROGRAM.value == "train_rae":
      result = aot.train_rae_report(config, _TOPOLOGY.value, _NUM_SLICES.value)
    elif _PROGRAM.value == "eval":
      result = aot.eval_report(config, _TOPOLOGY.value, _NUM_SLICES.value)
    elif _PROGRAM.value == "sample":
      result = aot.sample_report(config, _TOPOLOGY.value, _NUM_SLICES.value)
    else:
      result = aot.report(config, _TOPOLOGY.value, _NUM_SLICES.value)
  except aot.NoTpuCompiler as e:
    raise ValueError(str(e)) from e
  print(json.dumps(result))
  if not result["fits"] and _PROGRAM.value == "latent_cache":
    print(f"mmpretrain compile: error: the encode step does not fit {result['tpu']}'s "
          f"{result['hbm_bytes'] / 2**30:.0f} GiB per chip", file=sys.stderr)
    sys.exit(3)
  if not result["fits"] and _PROGRAM.value == "train_rae":
    print(f"mmpretrain compile: error: the decoder's step does not fit {result['tpu']}'s "
          f"{result['hbm_bytes'] / 2**30:.0f} GiB per chip: try {aot.stage_advice(config)}",
          file=sys.stderr)
    sys.exit(3)
  if not result["fits"] and _PROGRAM.value in ("eval", "sample"):
    step = "held-out loss step" if _PROGRAM.value == "eval" else "denoising step"
    print(f"mmpretrain compile: error: the {step} does not fit {result['tpu']}'s "
          f"{result['hbm_bytes'] / 2**30:.0f} GiB per chip: try a smaller "
          f"--config.eval.batch_size or a larger --config.mesh.fsdp (now {config.mesh.fsdp})",
          file=sys.stderr)
    sys.exit(3)
  if not result["fits"]:
    need = result.get("compiler") or f"{result['per_device_bytes'] / 2**30:.1f} GiB needed"
    print(f"mmpretrain compile: error: the step does not fit {result['tpu']}'s "
          f"{result['hbm_bytes'] / 2**30:.0f} GiB per chip ({need}): try {aot.advice(config)}",
          file=sys.stderr)
    sys.exit(3)


def cmd_export_params():
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: the run whose checkpoint to export")
  # pylint: disable=import-outside-toplevel
  from mmpretrain.run import Run
  from mmpretrain.train.checkpoint import export_params
  config = _config(of_run=True)
  print(f"wrote {export_params(_WORKDIR.value, config.checkpoint, Run(config), _STEP.value)}")


def cmd_fid():
  """FID between --real and --fake (folders or .npz statistics) as pytorch-fid computes it,
  printed as one JSON line."""
  # pylint: disable=import-outside-toplevel
  import json
  from mmpretrain.fid.score import compare
  if not _REAL.value:
    raise app.UsageError("--real is required: a folder of images or a .npz of statistics")
  if not (_FAKE.value or _SAVE_STATS.value):
    raise app.UsageError("give --fake (the images to score) or --save_stats=FILE")
  print(json.dumps(compare(_REAL.value, _FAKE.value, _INCEPTION.value, _BATCH_SIZE.value,
                           _SAVE_STATS.value)))


def cmd_clip_score():
  """CLIP score of the images `sample --prompts` drew against their prompts, with a SigLIP
  checkpoint, printed as one JSON line."""
  # pylint: disable=import-outside-toplevel
  import json
  from mmpretrain.encoders.clip_score import ClipScorer, clip_score
  from mmpretrain.fid.images import read_image
  from mmpretrain.generate.prompt_export import geneval_samples
  if not (_FAKE.value and _SIGLIP.value):
    raise app.UsageError("give --fake (a geneval-layout folder) and --siglip (a checkpoint)")
  paths, captions = geneval_samples(_FAKE.value)
  scorer = ClipScorer(_SIGLIP.value, _BATCH_SIZE.value)
  cosines = scorer.cosines([read_image(p) for p in paths], captions)
  print(json.dumps({"clip_score": clip_score(cosines), "images": len(paths),
                    "distinct_prompts": len(set(captions))}))


@dataclasses.dataclass(frozen=True)
class Verb:
  run: Callable[[], None]
  summary: str                 # one line for `mmpretrain --help`
  example: str                 # a command that works after `make demo`
  flags: tuple[str, ...]       # the flags it reads (`--config.<key>=…` with --config)
  positional: str = ""         # what words without dashes name (study: NAME), if any


_STAGE = ("config", "workdir")
_JOB = ("multihost", "coordinator_address", "num_processes", "process_id")
_TRAINING = _STAGE + _JOB
_SAMPLE = ("config", "workdir", "step", "output", "prompt", "max_new_tokens", "temperature",
           "top_p", "caption", "images_per_caption", "prompts", "prompt_layout",
           "prompts_per_batch", "image", "document", "begin_image",
           "rollouts", "horizon", "actions", *_JOB)
VERBS = {
    "prepare": Verb(cmd_prepare, "write the config's datasets (TFDS array_record) and "
                    "train its tokenizer", "mmpretrain prepare --config=configs/demo.py",
                    ("config", "datasets", "rebuild", "check", "runner", "latents", *_JOB)),
    "train": Verb(cmd_train, "train the unified model (re-running resumes from the newest "
                  "checkpoint)", "mmpretrain train --config=configs/demo.py --workdir="
                  "runs/demo --config.train.num_steps=100", _TRAINING),
    "finetune": Verb(cmd_finetune, "train on new data from a pretrained run's parameters "
                     "(config.train.init_from) with a fresh optimizer",
                     "mmpretrain finetune --config=configs/demo.py --workdir=runs/demo_finetuned "
                     "--config.train.init_from=runs/demo", _TRAINING),
    "eval": Verb(cmd_eval, "score a checkpoint on held-out data (losses, caption and "
                 "generation accuracy), with the run's config.json unless --config is given",
                 "mmpretrain eval --workdir=runs/demo",
                 ("config", "workdir", "step", *_JOB)),
    "sample": Verb(cmd_sample, "continue text, draw captions, caption images, write "
                   "interleaved documents, world-model rollouts or a benchmark's prompt images",
                   "mmpretrain sample --workdir=runs/demo --prompt=\"ROMEO:\" "
                   "--caption=\"a handwritten digit seven\"", _SAMPLE),
    "train-encoder": Verb(cmd_train_encoder, "train the SigLIP-style semantic encoder the "
                          "RAE freezes", "mmpretrain train-encoder --config=configs/stages/"
                          "encoder_demo.py --workdir=runs/demo_encoder", _TRAINING),
    "train-rae": Verb(cmd_train_rae, "train the RAE decoder on a frozen encoder's latents",
                      "mmpretrain train-rae --config=configs/stages/rae_demo.py --workdir="
                      "runs/demo_rae --config.rae.encoder=runs/demo_encoder/encoder",
                      _TRAINING),
    "train-vae": Verb(cmd_train_vae, "train the VAE baseline representation",
                      "mmpretrain train-vae --config=configs/stages/vae_demo.py "
                      "--workdir=runs/demo_vae", _TRAINING),
    "train-classifier": Verb(cmd_train_classifier, "train the CNN that judges generated "
                             "digits", "mmpretrain train-classifier --config=configs/stages/"
                             "classifier_demo.py --workdir=runs/demo_classifier",
                             _TRAINING),
    "eval-representation": Verb(cmd_eval_representation, "reconstruction PSNR and linear "
                                "probe of a visual representation",
                                "mmpretrain eval-representation --config=configs/demo.py "
                                "--workdir=runs/eval_rae", _STAGE),
    "analyze-experts": Verb(cmd_analyze_experts, "expert specialization by token kind of "
                            "an MoE run", "mmpretrain analyze-experts --workdir=runs/moe",
                            ("workdir", "windows", "threshold")),
    "analyze-generation": Verb(cmd_analyze_generation, "drawn images' latents against real "
                               "ones: is the generator or the decoder what fails?",
                               "mmpretrain analyze-generation --workdir=runs/demo",
                               ("config", "workdir")),
    "sweep": Verb(cmd_sweep, "run an IsoFLOP grid or an ablation's variants (or print "
                  "their TPU launches)", "mmpretrain sweep --config=configs/scaling/mini.py "
                  "--out=runs/scaling_mini", ("config", "out", "launcher")),
    "fit": Verb(cmd_fit, "fit compute-optimal scaling laws to a sweep's results",
                "mmpretrain fit --results=runs/scaling_mini/results.jsonl",
                ("results", "bootstrap", "metrics")),
    "study": Verb(cmd_study, "the paper's experiments: list them; plan one's runs at a "
                  "scale, compile their steps, run or launch them, or report its figure and "
                  "table from their results",
                  "mmpretrain study separation --scale=paper --plan",
                  ("list", "scale", "plan", "compile", "topology", "run", "out", "launcher",
                   "report", "results"), positional="NAME"),
    "compile": Verb(cmd_compile, "compile the train step for a TPU topology here (libtpu, "
                    "no TPU): memory per chip, cost-model time and MFU",
                    "mmpretrain compile --config=configs/bench/dense_ref.py --topology=v5p-8",
                    ("config", "topology", "num_slices", "program")),
    "fid": Verb(cmd_fid, "Fréchet Inception Distance between two image folders or .npz "
                "statistics, as pytorch-fid computes it",
                "mmpretrain fid --real=real_images --fake=generated_images "
                "--inception=pt_inception-2015-12-05-6726825d.pth",
                ("real", "fake", "inception", "save_stats", "batch_size")),
    "clip-score": Verb(cmd_clip_score, "CLIP score of the images `sample --prompts` drew "
                       "against their prompts, with a SigLIP checkpoint",
                       "mmpretrain clip-score --fake=runs/demo/prompt_images/prompts "
                       "--siglip=siglip2-so400m-patch14-224", ("fake", "siglip", "batch_size")),
    "export-params": Verb(cmd_export_params, "write a checkpoint's parameters alone",
                          "mmpretrain export-params --workdir=runs/demo",
                          ("config", "workdir", "step")),
}
_OWN_FLAGS = {name for verb in VERBS.values() for name in verb.flags}
_HELP = ("help", "helpshort", "helpfull", "h", "?")


def overview() -> str:
  width = max(map(len, VERBS))
  lines = ["usage: mmpretrain VERB [--flag=value ...]   (mmpretrain VERB --help for one verb)",
           "", "verbs:"]
  lines += [f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()]
  return "\n".join(lines)


def verb_help(name: str) -> str:
  verb = VERBS[name]
  words = f" [{verb.positional}]" if verb.positional else ""
  lines = [f"usage: mmpretrain {name}{words} [--flag=value ...]", "", verb.summary + ".", "",
           "flags:"]
  for flag in verb.flags:
    f = flags.FLAGS[flag]
    default = "" if f.default is None else f" (default: {f.default!r})"
    # The help strings name their verbs ("sample: …", after "<auto|off>: " for an enum);
    # absl appends a note to list flags.
    text = re.sub(r"^(<[^>]*>: )?[a-z, -]+: ", r"\1", f.help.split(";\n")[0])
    lines.append(f"  --{flag}{default}\n      {text}")
  if "config" in verb.flags:
    lines.append("  --config.<key>=value\n      override any key of the config file")
  lines += ["", "example:", f"  {verb.example}"]
  return "\n".join(lines)


def _flag_name(arg: str) -> str | None:
  """The flag an argument sets (`--nofoo` sets the boolean foo), or None for a value."""
  if not arg.startswith("-"):
    return None
  name = arg.lstrip("-").split("=", 1)[0]
  if name not in _OWN_FLAGS and name.startswith("no") and name[2:] in _OWN_FLAGS:
    name = name[2:]
  return name


def _check_verb_flags(verb: str, args: list[str]) -> None:
  """Refuses a flag of another verb (it would be parsed and silently ignored)."""
  for arg in args:
    name = _flag_name(arg)
    if name in _OWN_FLAGS and name not in VERBS[verb].flags:
      owners = [v for v, spec in VERBS.items() if name in spec.flags]
      raise app.UsageError(f"--{name} is a flag of `mmpretrain {' / '.join(owners)}`, not "
                           f"of `mmpretrain {verb}` (mmpretrain {verb} --help lists its flags)")
    if name and name.startswith("config.") and "config" not in VERBS[verb].flags:
      raise app.UsageError(f"`mmpretrain {verb}` reads no config file: drop {arg}")


def _run(command):
  def main(argv):
    if len(argv) > 1 and not VERBS[command].positional:
      raise app.UsageError(f"unexpected arguments {argv[1:]}")
    _NAMES[:] = argv[1:]
    if not flags.FLAGS["verbosity"].present:   # Orbax logs every save at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      VERBS[command].run()
    # A grain worker's error reaches this process as itself, its worker traceback attached
    # and grain's notes added, which str() leaves out: the message alone is the line.
    except (config_lib.ConfigError, FileNotFoundError, ValueError, ArithmeticError,
            records.UnreadableRecordError) as e:
      print(f"mmpretrain {command}: error: {e}", file=sys.stderr)
      sys.exit(2)
  return main


def _check_override_keys(args: list[str]) -> None:
  """Refuses `--config.<key>=…` overrides of keys the config file does not define, in the
  one-line form of every other config error (ml_collections would raise a traceback)."""
  path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  keys = [a[len("--config."):].split("=", 1)[0] for a in args if a.startswith("--config.")]
  if keys and path is None:
    raise config_lib.ConfigError(f"--config.{keys[0]} overrides a key of a config file: give "
                                 "--config=FILE too")
  if not keys:
    return
  file, _, arg = path.partition(":")
  config = config_lib.load_config(file, arg or None)
  for key in keys:
    config_lib.check_key_exists(config, key)


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1].lstrip("-") in _HELP:
    print(overview(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
    sys.exit(0 if len(argv) >= 2 else 2)
  command, args = argv[1], argv[2:]
  if "--" in args:
    if command != "prepare":
      print(f"mmpretrain {command}: error: only `mmpretrain prepare` takes options after "
            "`--` (Beam pipeline options)", file=sys.stderr)
      sys.exit(2)
    cut = args.index("--")
    args, _PIPELINE_ARGS[:] = args[:cut], args[cut + 1:]
  distributed.skip_tpu_probe_on_a_host_only_libtpu()
  if command not in VERBS:
    print(f"mmpretrain: no verb {command!r}\n\n{overview()}", file=sys.stderr)
    sys.exit(2)
  if any(_flag_name(a) in _HELP for a in args):
    print(verb_help(command))
    sys.exit(0)
  try:
    _check_verb_flags(command, args)
    _check_override_keys(args)
  except (app.UsageError, config_lib.ConfigError) as e:
    print(f"mmpretrain {command}: error: {e}", file=sys.stderr)
    sys.exit(2)
  if command.startswith("train"):
    hostalloc.relaunch_with_jemalloc()
  app.run(_run(command), argv=[f"mmpretrain {command}"] + args)


if __name__ == "__main__":
  main()
