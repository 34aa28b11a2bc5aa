"""Vision encoders imported from Hugging Face checkpoints match the reference PyTorch models.

Small random configs of the `transformers` classes are saved locally with save_pretrained
(what a hub checkpoint looks like on disk); every parameter is perturbed first, so a
mis-mapped norm scale, bias or layer scale cannot hide behind its default init.
"""
import numpy as np
import pytest
import torch
import transformers

from mmpretrain import storage
from mmpretrain.encoders import hf_import
from mmpretrain.encoders.interpolate import resize_matrix

TOLERANCE = 1e-4        # max abs difference of float32 features (LayerNorm-scaled, O(1))


def perturbed(model):
  torch.manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2 if p.ndim > 1 else 0.5)
  return model.eval()


def torch_features(model, images: np.ndarray, **kwargs):
  with torch.no_grad():
    return model(torch.tensor(images.transpose(0, 3, 1, 2)), **kwargs)


def images(size: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(size).normal(size=(batch, size, size, 3)).astype(np.float32)


def assert_close(ours, reference):
  np.testing.assert_allclose(np.asarray(ours), reference.numpy(), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("size", [28, 35, 14])      # the trained 4x4 grid, 5x5 and 2x2
def test_siglip_vision_tower_matches_transformers(tmp_path, size):
  """A full SigLIP model (text + vision, as google/siglip2-* checkpoints are saved)."""
  config = transformers.SiglipConfig(
      vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, image_size=28, patch_size=7),
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, vocab_size=100))
  reference = perturbed(transformers.SiglipModel(config))
  reference.save_pretrained(tmp_path)
  encoder = hf_import.load_hf_vision_encoder(str(tmp_path))
  x = images(size)
  want = torch_features(reference.vision_model, x, interpolate_pos_encoding=size != 28)
  got = encoder(x)
  assert_close(got["tokens"], want.last_hidden_state)
  assert_close(got["pooled"], want.pooler_output)


@pytest.mark.parametrize("size", [28, 21, 42])      # the trained 4x4 grid, 3x3 and 6x6
def test_dinov2_with_registers_matches_transformers(tmp_path, size):
  config = transformers.Dinov2WithRegistersConfig(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7,
      num_register_tokens=3)
  reference = perturbed(transformers.Dinov2WithRegistersModel(config))
  reference.save_pretrained(tmp_path)
  encoder = hf_import.load_hf_vision_encoder(str(tmp_path))
  want = torch_features(reference, images(size)).last_hidden_state
  got = encoder(images(size))
  assert_close(got["cls"], want[:, 0])
  assert_close(got["registers"], want[:, 1:4])
  assert_close(got["tokens"], want[:, 4:])


def test_dinov2_swiglu_without_registers_matches_transformers(tmp_path):
  """The giant model's fused SwiGLU MLP, in the original DINOv2 (no registers)."""
  config = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=28, patch_size=7, use_swiglu_ffn=True)
  reference = perturbed(transformers.Dinov2Model(config))
  reference.save_pretrained(tmp_path)
  encoder = hf_import.load_hf_vision_encoder(str(tmp_path))
  assert encoder.cfg.swiglu and encoder.cfg.num_registers == 0
  want = torch_features(reference, images(28)).last_hidden_state
  got = encoder(images(28))
  assert_close(got["cls"], want[:, 0])
  assert_close(got["tokens"], want[:, 1:])


@pytest.mark.parametrize("mode, antialias", [("bicubic", False), ("bicubic_antialias", True)])
@pytest.mark.parametrize("sizes", [(4, 3), (37, 16), (16, 37), (6, 2)])
def test_position_grid_resizing_matches_torch_interpolate(mode, antialias, sizes):
  n, m = sizes
  grid = np.random.default_rng(n).normal(size=(1, 5, n, n))
  want = torch.nn.functional.interpolate(torch.tensor(grid), size=(m, m), mode="bicubic",
                                         align_corners=False, antialias=antialias).numpy()
  rows = resize_matrix(n, m, mode)
  np.testing.assert_allclose(np.einsum("ih,bchw,jw->bcij", rows, grid, rows), want, atol=1e-12)


def test_a_checkpoint_with_missing_tensors_is_named(tmp_path):
  config = transformers.Dinov2WithRegistersConfig(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7)
  transformers.Dinov2WithRegistersModel(config).save_pretrained(tmp_path)
  config.num_hidden_layers = 3               # config.json claims a layer the weights lack
  config.save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"tensor 'encoder\.layer\.2\..*' is missing"):
    hf_import.load_hf_vision_encoder(str(tmp_path))


@pytest.mark.parametrize("family, config_class", [("siglip", "SiglipVisionConfig"),
                                                  ("dinov2", "Dinov2Config")])
def test_hub_defaults_are_the_transformers_config_defaults(family, config_class):
  defaults = getattr(transformers, config_class)().to_dict()
  assert {k: defaults[k] for k in hf_import.HF_DEFAULTS[family]} == hf_import.HF_DEFAULTS[family]


def test_a_hub_config_with_only_its_non_default_fields_loads():
  # google/siglip-so400m-patch14-384's config.json: the vision tower's non-default fields.
  hub = {"model_type": "siglip", "vision_config": {
      "hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
      "model_type": "siglip_vision_model", "num_attention_heads": 16,
      "num_hidden_layers": 27, "patch_size": 14}}
  family, cfg = hf_import.config_from_hf(hub)
  assert family == "siglip"
  assert (cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim,
          cfg.layer_norm_eps, cfg.activation, cfg.channels) == (
              384, 14, 1152, 27, 16, 4304, 1e-6, "gelu_tanh", 3)
  family, cfg = hf_import.config_from_hf({"model_type": "dinov2", "hidden_size": 384,
                                          "num_attention_heads": 6})
  assert (cfg.patch_size, cfg.width, cfg.mlp_dim, cfg.layer_scale) == (14, 384, 1536, 1.0)


def test_a_checkpoint_on_an_object_store_loads_through_storage(tmp_path, monkeypatch):
  """The same checkpoint, its directory taken for a bucket: every file is read through
  storage (the safetensors as a streamed local copy) and the encoder is the same."""
  config = transformers.Dinov2WithRegistersConfig(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7)
  perturbed(transformers.Dinov2WithRegistersModel(config)).save_pretrained(tmp_path)
  want = hf_import.load_hf_vision_encoder(str(tmp_path))(images(28))["tokens"]
  copies, real = [], storage.local_file
  monkeypatch.setattr(storage, "is_local", lambda path: str(tmp_path) not in str(path))
  monkeypatch.setattr(storage, "local_file", lambda path: (copies.append(path), real(path))[1])
  got = hf_import.load_hf_vision_encoder(str(tmp_path))(images(28))["tokens"]
  assert copies and all(str(c).endswith(".safetensors") for c in copies)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
