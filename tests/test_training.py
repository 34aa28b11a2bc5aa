"""End to end on real data: short CPU runs (dense and MoE) lower both losses and write outputs."""
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mmpretrain.analysis.experts import load_routing
from mmpretrain.data.pipeline import make_batches
from mmpretrain.model.moe import RouterBias
from mmpretrain.tokenizers import visual
from mmpretrain.train import evaluate, objective
from mmpretrain.train import step as step_lib
from mmpretrain.train.checkpoint import load_params
from mmpretrain.train.loop import train
from mmpretrain.train.step import Trainer
from mmpretrain.run import Run
from mmpretrain.tokenizers.visual import row_spec

from conftest import config_file, tiny_config


def evaluated_config(data_dir: str):
  c = tiny_config(data_dir)
  c.eval.every_steps, c.eval.batches = 10, 2
  c.checkpoint.best_metric = "image_text/flow_loss"
  return c


# ~50 s: make test-slow. The default suite trains a model end to end in
# tests/test_evaluation.py (a model trained on one digit draws that digit).
@pytest.mark.slow
def test_thirty_steps_lower_text_and_flow_loss(data_dir, tmp_path, monkeypatch):
  config = evaluated_config(data_dir)
  summary = train(config, str(tmp_path / "run"))
  tmp_path = tmp_path / "run"
  first, last = summary["first"], summary["last"]
  assert last["step"] == 29
  # From uniform (ln 512 = 6.24 nats) by more than half a nat in 30 steps.
  assert last["text_loss"] < first["text_loss"] - 0.5, (first["text_loss"], last["text_loss"])
  assert first["visual_tokens"] > 0 and last["visual_tokens"] > 0   # both steps saw images
  assert last["flow_loss"] < 0.8 * first["flow_loss"], (first["flow_loss"], last["flow_loss"])
  assert last["text_bits_per_byte"] < first["text_bits_per_byte"]
  # The run's artifacts: TensorBoard events, metrics log, loss plot, sample grid.
  assert glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  logged = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  assert {"text/loss", "visual/flow_loss", "text/bits_per_byte", "speed/step_s",
          "speed/tokens_per_s"} <= set(logged[0])
  # Held-out losses at steps 10, 20, 30, per stream; they fall too.
  evals = [r for r in logged if "eval/text/text_bits_per_byte" in r]
  assert [r["step"] for r in evals] == [10, 20, 30] and summary["eval"]["step"] == 30
  assert {"eval/text/text_loss", "eval/image_text/flow_loss",
          "eval/image_text/text_loss", "eval/mnist/caption_accuracy"} <= set(evals[0])
  assert evals[-1]["eval/text/text_loss"] < evals[0]["eval/text/text_loss"]
  # Keep-best: the step with the lowest held-out flow loss, its parameters loadable.
  best = min(evals, key=lambda r: r["eval/image_text/flow_loss"])
  record = json.load(open(os.path.join(tmp_path, "best", "best.json")))
  assert record["step"] == best["step"]
  assert record["value"] == pytest.approx(best["eval/image_text/flow_loss"])
  assert sorted(os.listdir(os.path.join(tmp_path, "best"))) == ["best.json",
                                                                f"step_{best['step']}"]
  load_params(record["params"], Run(config))
  # Evaluating the checkpoint reads its parameters alone and builds no optimizer; the
  # held-out losses are the ones the run logged at that step.
  def no_optimizer(*args):
    raise AssertionError("an evaluation built an optimizer")
  monkeypatch.setattr(step_lib, "make_optimizer", no_optimizer)
  result = evaluate.evaluate_checkpoint(config, str(tmp_path))
  assert result["step"] == 30
  for key in ("text/text_loss", "image_text/flow_loss", "mnist/caption_accuracy"):
    assert result[key] == pytest.approx(evals[-1][f"eval/{key}"], rel=1e-5), key
  assert os.path.exists(os.path.join(tmp_path, "plots", "losses.png"))
  grid = Image.open(summary["samples"])
  size = 2 * config.data.image_size                    # grid is upscaled 2×
  assert grid.size == (size * config.sample.images_per_caption, size * len(config.sample.captions))

  # The trained run from the command line: every evaluation, then every kind of sample.
  path = config_file(tmp_path.parent, evaluated_config, data_dir)
  run = lambda *args: subprocess.run([sys.executable, "-m", "mmpretrain.cli", *args,
                                      f"--config={path}", f"--workdir={tmp_path}"],
                                     capture_output=True, text=True, check=True).stdout
  assert "mnist/caption_accuracy" in run("eval")
  assert json.load(open(tmp_path / "eval" / "step_30.json"))["step"] == 30
  digit = tmp_path / "digit.png"
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(digit)
  out = run("sample", "--prompt=ROMEO:", "--max_new_tokens=4", f"--image={digit}",
            "--caption=a handwritten digit seven", "--images_per_caption=3",
            "--document=a handwritten digit two", "--begin_image")
  assert "[step 30] ROMEO:" in out and f"[step 30] {digit}:" in out
  drawn = tmp_path / "samples" / "document_step30_0_image0.png"
  assert f"[step 30] a handwritten digit two [image: {drawn}]" in out and drawn.exists()
  assert Image.open(tmp_path / "samples" / "captions_step30.png").size == (3 * size, size)
  # Without --config, a verb that reads a run uses the run's own config.json.
  out = subprocess.run([sys.executable, "-m", "mmpretrain.cli", "export-params",
                        f"--workdir={tmp_path}"], capture_output=True, text=True, check=True)
  assert "wrote" in out.stdout


@pytest.mark.slow              # ~30 s; make test-slow
def test_moe_run_trains_and_moves_router_bias_against_load(config, tokenizer, tmp_path):
  config.model.moe.update({"num_experts": 4, "router": "sigmoid", "bias_update_rate": 0.01,
                           "shared_experts": "per_modality"})
  summary = train(config, str(tmp_path))
  first, last = summary["first"], summary["last"]
  assert last["text_loss"] < first["text_loss"] - 0.5
  assert last["flow_loss"] < 0.8 * first["flow_loss"]
  assert {"moe_load_balance", "moe_router_z", "moe_drop_rate"} <= set(last)
  # Routing counts by token kind, one window per log step, every step counted once.
  counts, layers, steps = load_routing(str(tmp_path), windows=0)
  assert steps == [0, 5, 10, 15, 20, 25, 29] and list(layers) == [0, 1]
  per_layer = counts.sum(axis=(1, 2))
  assert per_layer[0] == per_layer[1] > 0          # each layer routes every token k times
  assert (counts.sum(axis=(0, 2)) > 0).all()       # text, understanding and generation seen

  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  batch = next(make_batches(config, tokenizer, row_spec(config)))
  batch = {k: v for k, v in batch.items() if not k.startswith("skipped_")}
  state = trainer.init_state(0)
  # The router load the step sees: the same noised inputs (the step's per-row keys).
  _, step_rng = jax.random.split(state.rng)
  row_rngs = jax.random.split(step_rng, config.data.batch_size)
  latents = visual.frame_latent_tokens(trainer.run.representation, trainer.run.frozen,
                                       batch["frames"], config.visual.patch_size)
  inputs, _ = objective.noised_inputs(batch, latents, row_rngs, config.diffusion,
                                      trainer.run.time_shift)
  load = np.asarray(trainer.run.model(state.params)(inputs)[2]["expert_load"])
  state, _ = trainer.step(state, batch)
  (bias,) = jax.tree.leaves(nnx.state(trainer.run.model(state.params), RouterBias))
  want = 0.01 * np.sign(load.mean(-1, keepdims=True) - load)
  np.testing.assert_allclose(np.asarray(bias).reshape(want.shape), want, atol=1e-7)


def test_held_out_losses_match_the_train_step_and_do_not_depend_on_the_mesh(config, tokenizer):
  """On text-only rows CE needs no noise (after an image it would see the noised image):
  the evaluation of a batch equals what the train step reports for it (before its
  update). The fixed-noise evaluation repeats exactly and gives the same values on an
  8-device mesh."""
  from mmpretrain import sharding  # pylint: disable=import-outside-toplevel
  config.eval.batches = 2
  trainer = Trainer(Run(config), tokenizer.byte_lengths())
  state = trainer.init_state(0)
  batch = evaluate.stream_batches(config, tokenizer, trainer.run.spec, "text")[0]
  evaluated = objective.summarize(trainer.eval_sums(state.params, batch), config.loss)
  _, metrics = trainer.step(jax.tree.map(jnp.copy, state), batch)
  np.testing.assert_allclose(evaluated["text_loss"], metrics["text_loss"], rtol=1e-5)

  held_out = evaluate.HeldOut(trainer, tokenizer)(state.params)
  assert held_out == evaluate.HeldOut(trainer, tokenizer)(state.params)
  mesh = sharding.make_mesh(config.mesh)
  sharded = Trainer(Run(config, mesh), tokenizer.byte_lengths())
  params = jax.device_put(state.params, sharded.state_sharding.params)
  on_mesh = evaluate.HeldOut(sharded, tokenizer)(params)
  assert on_mesh.keys() == held_out.keys()
  for key, value in held_out.items():
    assert on_mesh[key] == pytest.approx(value, rel=1e-5), key
