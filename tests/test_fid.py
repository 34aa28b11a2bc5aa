"""FID against pytorch-fid itself: its InceptionV3 (random weights, BatchNorm calibrated,
saved as its weights file is laid out), its file reading, get_activations,
calculate_activation_statistics and calculate_frechet_distance are the reference for the
features, statistics and distance here; plus the .pth reader, the resize, the CLI and its
errors on bad input."""
import collections
import json
import os
import pickle
import zipfile
from unittest import mock

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from absl import flags
from PIL import Image

from mmpretrain import cli
from mmpretrain.fid import inception as fid_inception
from mmpretrain.fid.pth import read_state_dict
from mmpretrain.fid.resize import resize_bilinear
from mmpretrain.fid.score import FeatureExtractor
from mmpretrain.fid.statistics import frechet_distance, statistics

# conftest.py has loaded torchvision past its missing CUDA kernels.
import torchvision  # pylint: disable=wrong-import-order
from pytorch_fid import fid_score  # pylint: disable=wrong-import-order
from pytorch_fid import inception as reference  # pylint: disable=wrong-import-order

SIDE, PER_SET = 64, 16          # small images, resized to 299² by both implementations


def grating_images(seed: int, noise: float) -> np.ndarray:
  """uint8 [PER_SET, SIDE, SIDE, 3]: colour sine gratings of random frequency and phase
  with pixel noise; the two sets differ in their noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
  images = []
  for _ in range(PER_SET):
    frequency, phase = rng.uniform(1, 6, (3, 2)), rng.uniform(0, 2 * np.pi, 3)
    waves = np.stack([np.sin(2 * np.pi * (frequency[c, 0] * x + frequency[c, 1] * y)
                             + phase[c]) for c in range(3)], axis=-1)
    images.append(np.clip(128 + 100 * waves + rng.normal(0, noise, waves.shape), 0, 255))
  return np.stack(images).astype(np.uint8)


def write_folder(folder, images) -> list[str]:
  os.makedirs(folder)
  paths = [os.path.join(folder, f"{i:03d}.png") for i in range(len(images))]
  for path, image in zip(paths, images):
    Image.fromarray(image).save(path)
  return paths


def to_torch(images) -> torch.Tensor:
  return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255


def random_fid_inception():
  """pytorch-fid's FID Inception with its random initial weights (its download skipped,
  nothing loaded), its BatchNorm statistics then measured on uniform-noise images so the
  features of the test images spread rather than collapse; (the torchvision network whose
  state dict is the weights file, pytorch-fid's InceptionV3 around it)."""
  torch.manual_seed(0)
  with mock.patch.object(reference, "load_state_dict_from_url", lambda *a, **k: None), \
      mock.patch.object(torchvision.models.inception.Inception3, "load_state_dict",
                        lambda self, state: None):
    network = reference.fid_inception_v3()
  with mock.patch.object(reference, "fid_inception_v3", lambda: network):
    model = reference.InceptionV3([reference.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = None                     # a plain average over the batches seen
  noise = np.random.default_rng(2).integers(0, 256, (PER_SET, SIDE, SIDE, 3), np.uint8)
  model.train()
  with torch.no_grad():
    model(to_torch(noise))
  model.eval()
  return network, model


@pytest.fixture(scope="module")
def fid_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("fid")
  network, model = random_fid_inception()
  weights = str(root / fid_inception.WEIGHTS_FILE)
  # The layout of files saved before torch 1.6, as the released weights were.
  torch.save(network.state_dict(), weights, _use_new_zipfile_serialization=False)
  sets = {"real": grating_images(0, 10.0), "fake": grating_images(1, 40.0)}
  files = {name: write_folder(root / name, images) for name, images in sets.items()}
  activations, stats = {}, {}
  for name in sets:
    recorded = []
    def record(*args, **kwargs):
      recorded.append(get_activations(*args, **kwargs))
      return recorded[-1]
    get_activations = fid_score.get_activations
    with mock.patch.object(fid_score, "get_activations", record):
      stats[name] = fid_score.calculate_activation_statistics(
          files[name], model, batch_size=PER_SET, dims=2048, device="cpu", num_workers=0)
    activations[name] = recorded[0]
  extract = FeatureExtractor(fid_inception.load_inception(weights), batch_size=PER_SET)
  features = {name: extract(images) for name, images in sets.items()}
  return {"root": root, "weights": weights, "sets": sets, "activations": activations,
          "stats": stats, "features": features}


def relative_error(got, want) -> float:
  """Largest deviation against the largest magnitude of the reference."""
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def run_cli(capsys, *args):
  """`mmpretrain fid ARGS` in this process (the jitted network compiles once)."""
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["mmpretrain", "fid", *args])
  finally:
    flags.FLAGS.unparse_flags()           # absl keeps a run's flags for the next one
  out = capsys.readouterr()
  return exit_info.value.code, out.out, out.err


def test_pool_features_match_pytorch_fid(fid_setup):
  for name in ("real", "fake"):
    want = fid_setup["activations"][name]
    assert want.std(axis=0).mean() > 1e-2 * np.abs(want).mean()       # features spread
    assert relative_error(fid_setup["features"][name], want) < 1e-4


def test_statistics_match_pytorch_fid(fid_setup):
  for name in ("real", "fake"):
    mu, sigma = statistics(fid_setup["features"][name])
    want_mu, want_sigma = fid_setup["stats"][name]
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (2048, 2048)
    assert relative_error(mu, want_mu) < 1e-4
    assert relative_error(sigma, want_sigma) < 1e-4


def test_frechet_distance_matches_pytorch_fid_and_the_closed_form(fid_setup):
  # The first 64 feature dimensions: the same code path at a fraction of the matrix
  # square root's cost (tests marked slow run all 2048).
  cut = lambda mu, sigma: (mu[:64], sigma[:64, :64])
  ours = [cut(*statistics(fid_setup["features"][n])) for n in ("real", "fake")]
  want = fid_score.calculate_frechet_distance(*(cut(*fid_setup["stats"]["real"])),
                                              *(cut(*fid_setup["stats"]["fake"])))
  assert want > 1.0
  assert frechet_distance(*ours[0], *ours[1]) == pytest.approx(want, rel=1e-3)
  # Commuting (diagonal) covariances: ‖Δμ‖² + Σ(√a − √b)².
  rng = np.random.default_rng(0)
  mu_a, mu_b, a, b = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.1, 2, 5), \
      rng.uniform(0.1, 2, 5)
  closed = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(closed,
                                                                               rel=1e-9)


def test_cli_writes_a_folders_statistics_and_reads_pytorch_fids(fid_setup, capsys):
  root = fid_setup["root"]
  ours = str(root / "real_stats.npz")
  code, out, err = run_cli(capsys, f"--real={root / 'real'}", f"--save_stats={ours}",
                           f"--inception={fid_setup['weights']}")
  assert code is None or code == 0, err
  assert json.loads(out.strip().splitlines()[-1]) == {"real_images": PER_SET,
                                                      "stats": ours}
  with np.load(ours) as saved:
    assert sorted(saved.files) == ["mu", "sigma"]
    want_mu, want_sigma = fid_setup["stats"]["real"]
    assert relative_error(saved["mu"], want_mu) < 1e-4
    assert relative_error(saved["sigma"], want_sigma) < 1e-4
    mu, sigma = saved["mu"][:64], saved["sigma"][:64, :64]
  # A .npz as pytorch-fid's save_fid_stats writes it, against ours (64 dimensions, as
  # above): no Inception needed.
  small, theirs = str(root / "real_64.npz"), str(root / "fake_64.npz")
  np.savez_compressed(small, mu=mu, sigma=sigma)
  want_mu, want_sigma = fid_setup["stats"]["fake"]
  np.savez_compressed(theirs, mu=want_mu[:64], sigma=want_sigma[:64, :64])
  code, out, err = run_cli(capsys, f"--real={small}", f"--fake={theirs}")
  assert code is None or code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  want = fid_score.calculate_frechet_distance(
      *(s[:64] if s.ndim == 1 else s[:64, :64] for s in fid_setup["stats"]["real"]),
      want_mu[:64], want_sigma[:64, :64])
  assert result["fid"] == pytest.approx(want, rel=1e-3)
  assert result["real_images"] is None and result["fake_images"] is None


@pytest.mark.slow
def test_fid_of_two_folders_matches_pytorch_fid(fid_setup, capsys):
  """All 2048 dimensions, end to end. Prints the parity figures docs/fid.md quotes
  (`pytest tests/test_fid.py -m slow`)."""
  root = fid_setup["root"]
  code, out, err = run_cli(capsys, f"--real={root / 'real'}", f"--fake={root / 'fake'}",
                           f"--inception={fid_setup['weights']}")
  assert code is None or code == 0, err
  result = json.loads(out.strip().splitlines()[-1])
  assert result["real_images"] == result["fake_images"] == PER_SET
  want = fid_score.calculate_frechet_distance(*fid_setup["stats"]["real"],
                                              *fid_setup["stats"]["fake"])
  assert want > 1.0
  assert result["fid"] == pytest.approx(want, rel=1e-3)
  errors = {"features": max(relative_error(fid_setup["features"][n],
                                           fid_setup["activations"][n]) for n in ("real", "fake"))}
  for i, key in enumerate(("mu", "sigma")):
    errors[key] = max(relative_error(statistics(fid_setup["features"][n])[i],
                                     fid_setup["stats"][n][i]) for n in ("real", "fake"))
  errors["fid"] = abs(result["fid"] - want) / want
  with capsys.disabled():
    print(f"\nFID {result['fid']:.6g} (pytorch-fid {want:.6g}); largest relative error: "
          + ", ".join(f"{k} {v:.2g}" for k, v in errors.items()))


def test_an_image_that_does_not_decode_is_named(fid_setup, capsys, tmp_path):
  folder = tmp_path / "broken"
  write_folder(folder, fid_setup["sets"]["real"][:3])
  (folder / "000_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  code, _, err = run_cli(capsys, f"--real={folder}", f"--fake={folder}",
                         f"--inception={fid_setup['weights']}")
  assert code == 2
  assert err.strip().count("\n") == 0
  assert err.startswith("mmpretrain fid: error: ") and f"{folder}/000_broken.png" in err


def test_bad_statistics_and_missing_inputs_are_refused(capsys, tmp_path):
  no_sigma = str(tmp_path / "no_sigma.npz")
  np.savez(no_sigma, mu=np.zeros(4))
  code, _, err = run_cli(capsys, f"--real={no_sigma}", f"--fake={no_sigma}")
  assert code == 2 and no_sigma in err and "'sigma'" in err
  two = tmp_path / "two"
  write_folder(two, np.zeros((2, 8, 8, 3), np.uint8))
  code, _, err = run_cli(capsys, f"--real={two}", f"--fake={no_sigma}")
  assert code == 2 and no_sigma in err        # every input is read before any image
  code, _, err = run_cli(capsys, f"--real={two}", f"--fake={two}")
  assert code == 2 and "--inception is required" in err
  code, _, err = run_cli(capsys, f"--real={two}", f"--fake={two}", "--inception=absent.pth")
  assert code == 2 and "absent.pth: no such file; download" in err
  one = tmp_path / "one"
  write_folder(one, np.zeros((1, 8, 8, 3), np.uint8))
  code, _, err = run_cli(capsys, f"--real={one}", f"--fake={two}", "--inception=absent.pth")
  assert code == 2 and f"{one}: 1 image(s)" in err
  code, _, err = run_cli(capsys, f"--real={tmp_path / 'absent'}", f"--fake={two}",
                         "--inception=absent.pth")
  assert code == 2 and "absent: no such folder" in err


@pytest.mark.parametrize("change, message", [
    ("misshapen", "tensor Mixed_6b.branch7x7_2.conv.weight has shape [128, 128, 7, 1], "
                  "expected [128, 128, 1, 7]"),
    ("missing", "no tensor Mixed_7c.branch_pool.bn.running_var (expected shape [192])"),
    ("imagenet", "tensor fc.weight has shape [1000, 2048], expected [1008, 2048]"),
    ("extra", "unexpected tensor AuxLogits.conv0.conv.weight"),
])
def test_a_weights_file_that_does_not_fit_is_refused_naming_the_tensor(change, message,
                                                                       tmp_path):
  # Zeros broadcast from one element (stride 0): torch saves the one element, so the
  # file is small and the reader builds every tensor at its full shape.
  zeros = lambda *shape: torch.zeros(()).expand(*shape)
  state = collections.OrderedDict(
      (name, zeros(*shape)) for name, shape in fid_inception.expected_tensors().items())
  state["fc.weight"], state["fc.bias"] = zeros(1008, 2048), zeros(1008)
  if change == "misshapen":
    state["Mixed_6b.branch7x7_2.conv.weight"] = zeros(128, 128, 7, 1)
  elif change == "missing":
    del state["Mixed_7c.branch_pool.bn.running_var"]
  elif change == "imagenet":
    state["fc.weight"], state["fc.bias"] = zeros(1000, 2048), zeros(1000)
  else:
    state["AuxLogits.conv0.conv.weight"] = zeros(128, 768, 1, 1)
  path = str(tmp_path / "weights.pth")
  torch.save(state, path)
  with pytest.raises(ValueError) as error:
    fid_inception.load_inception(path)
  assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("zip_layout", [True, False])
def test_the_state_dict_reader_reads_both_torch_layouts(zip_layout, tmp_path):
  state = collections.OrderedDict(
      weight=torch.randn(3, 4), transposed=torch.randn(4, 5).t(), view=torch.arange(10.)[3:7],
      steps=torch.tensor(7), half=torch.randn(2).half(),
      parameter=torch.nn.Parameter(torch.randn(2)))
  path = str(tmp_path / "state.pth")
  torch.save(state, path, _use_new_zipfile_serialization=zip_layout)
  read = read_state_dict(path)
  assert list(read) == list(state)
  for name, tensor in state.items():
    want = tensor.detach().numpy()
    assert read[name].dtype == want.dtype and read[name].shape == want.shape, name
    np.testing.assert_array_equal(read[name], want)


class _Runs:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_the_state_dict_reader_runs_no_code(tmp_path):
  """A file torch.save wrote, its pickle swapped for one that would make a directory."""
  path, marker = str(tmp_path / "evil.pth"), str(tmp_path / "made_by_the_pickle")
  torch.save({"x": torch.zeros(1)}, path)
  with zipfile.ZipFile(path) as archive:
    records = {name: archive.read(name) for name in archive.namelist()}
  name = next(n for n in records if n.endswith("/data.pkl"))
  records[name] = pickle.dumps(collections.OrderedDict(x=_Runs(marker)), protocol=2)
  with zipfile.ZipFile(path, "w") as archive:
    for record, data in records.items():
      archive.writestr(record, data)
  with pytest.raises(ValueError, match=r"evil.pth: not a plain PyTorch state dict \(it "
                                       r"refers to posix.mkdir\)"):
    read_state_dict(path)
  assert not os.path.exists(marker)


@pytest.mark.parametrize("size", [(64, 64), (17, 300), (512, 384), (299, 299), (1, 5)])
def test_resize_matches_torch_bilinear(size):
  images = np.random.default_rng(0).random((2, *size, 3), dtype=np.float32)
  want = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299),
                       mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(resize_bilinear(images, 299, 299)), want,
                             rtol=0, atol=1e-6)
  if size[0] > 299:      # what jax.image.resize computes instead: it antialiases a shrink
    antialiased = jax.image.resize(images, (2, 299, 299, 3), "bilinear")
    assert np.max(np.abs(np.asarray(antialiased) - want)) > 1e-2
