"""CLIP score with a SigLIP checkpoint equals what transformers computes on the same weights,
tokenizer and images: the caption ids, the prepared pixels, and each image's cosine."""
import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from mmpretrain.encoders import clip_score, siglip_text
from test_encoders import perturbed

WORDS = ["<pad>", "</s>", "<unk>", "a", "handwritten", "digit", "three", "seven", "red",
         "blue", "cat", "on", "the", "mat"]
MAX_LENGTH = 12
CAPTIONS = ["a handwritten digit three", "seven", "a red cat on the blue mat", "the unknown"]


def write_checkpoint(directory, vision_use_head: bool = True, text_sign: float = 1.0):
  """A random SigLIP saved as the hub saves one; `text_sign` scales the text head (these
  random towers give small negative cosines, which -1 turns positive)."""
  config = transformers.SiglipConfig(
      vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, image_size=28, patch_size=7,
                         vision_use_head=vision_use_head),
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, vocab_size=len(WORDS), projection_size=48,
                       max_position_embeddings=MAX_LENGTH, pad_token_id=0))
  model = perturbed(transformers.SiglipModel(config))
  with torch.no_grad():
    model.text_model.head.weight.mul_(text_sign)
    model.text_model.head.bias.mul_(text_sign)
  model.save_pretrained(directory)
  tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                           special_tokens=[("</s>", 1)])
  tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
  return model


def images(n: int = 4) -> np.ndarray:
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (n, 40, 34, 3), dtype=np.uint8)   # resized to 28² either way


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = tmp_path_factory.mktemp("siglip")
  return directory, write_checkpoint(directory)


def reference_inputs(directory):
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(directory / "tokenizer.json"), pad_token="<pad>", eos_token="</s>")
  ids = tokenizer(CAPTIONS, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                  return_tensors="pt").input_ids
  processor = transformers.SiglipImageProcessorPil(size={"height": 28, "width": 28})
  pixels = processor([Image.fromarray(i) for i in images()], return_tensors="pt").pixel_values
  return ids, pixels


def test_cosines_match_transformers(checkpoint):
  directory, model = checkpoint
  ids, pixels = reference_inputs(directory)
  with torch.no_grad():
    out = model(input_ids=ids, pixel_values=pixels)
  want = (out.image_embeds * out.text_embeds).sum(-1).numpy()
  scorer = clip_score.ClipScorer(str(directory), batch_size=3)     # a ragged last batch
  np.testing.assert_array_equal(scorer.tokenize(CAPTIONS), ids.numpy())
  np.testing.assert_allclose(scorer.prepare(images()), pixels.numpy().transpose(0, 2, 3, 1),
                             atol=1e-5)
  got = scorer.cosines(images(), CAPTIONS)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert clip_score.clip_score(got) == pytest.approx(100 * np.maximum(want, 0).mean(), abs=1e-3)


def test_clip_score_is_the_mean_of_the_positive_part():
  assert clip_score.clip_score(np.array([0.3, -0.2, 0.5])) == pytest.approx(80 / 3)


def test_text_defaults_are_the_transformers_config_defaults():
  defaults = transformers.SiglipTextConfig()
  for key, value in siglip_text.TEXT_DEFAULTS.items():
    assert getattr(defaults, key) == value, key


def test_a_checkpoint_without_what_the_score_needs_is_named(tmp_path, checkpoint):
  directory, _ = checkpoint
  no_head = tmp_path / "no_head"
  write_checkpoint(no_head, vision_use_head=False)
  with pytest.raises(ValueError, match="no pooling head"):
    clip_score.ClipScorer(str(no_head))
  (no_head / "tokenizer.json").unlink()
  with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
    siglip_text.CaptionTokenizer(str(no_head), siglip_text.text_config_from_hf(
        json.loads((directory / "config.json").read_text())))


def test_the_cli_scores_a_geneval_layout_folder(tmp_path, capsys):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from mmpretrain import cli  # pylint: disable=import-outside-toplevel
  directory = tmp_path / "siglip"
  write_checkpoint(directory, text_sign=-1.0)
  drawn = images()
  for index, caption in enumerate(CAPTIONS[:2]):
    samples = tmp_path / "geneval" / f"{index:05d}" / "samples"
    samples.mkdir(parents=True)
    (samples.parent / "metadata.jsonl").write_text(json.dumps({"prompt": caption}) + "\n")
    for k in range(2):
      Image.fromarray(drawn[2 * index + k]).save(samples / f"{k:04d}.png")
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["mmpretrain", "clip-score", f"--fake={tmp_path / 'geneval'}",
                f"--siglip={directory}"])
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_info.value.code in (None, 0)
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  cosines = clip_score.ClipScorer(str(directory)).cosines(drawn, [CAPTIONS[0]] * 2
                                                          + [CAPTIONS[1]] * 2)
  assert (cosines > 0).all()
  assert result == {"clip_score": pytest.approx(clip_score.clip_score(cosines), abs=1e-4),
                    "images": 4, "distinct_prompts": 2}
