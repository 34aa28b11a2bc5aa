"""End to end on real data: a short CPU run lowers both losses and writes its outputs."""
import glob
import json
import os

from PIL import Image

from mmpretrain.train.loop import train


def test_thirty_steps_lower_text_and_flow_loss(config, tmp_path):
  summary = train(config, str(tmp_path))
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
  assert {"text/loss", "visual/flow_loss", "text/bits_per_byte"} <= set(logged[0])
  assert os.path.exists(os.path.join(tmp_path, "plots", "losses.png"))
  grid = Image.open(summary["samples"])
  size = 2 * config.data.image_size                    # grid is upscaled 2×
  assert grid.size == (size * config.sample.images_per_caption, size * len(config.sample.captions))
