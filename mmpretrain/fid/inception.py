"""The Inception-v3 of FID: pytorch-fid's `InceptionV3` (torchvision's Inception3 with
its `FIDInceptionA/C/E` blocks, the port of TensorFlow's 2015-12-05 graph) up to the
2048-d pool3 features, in NNX, with pytorch-fid's input handling.

Modules and parameters carry torchvision's names (`Mixed_6b.branch7x7_2.conv.weight`,
`….bn.running_var`), so the weights file maps onto them one to one; its convolution
kernels [O, I, kh, kw] are stored here as [kh, kw, I, O] (NHWC activations).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from mmpretrain import storage
from mmpretrain.fid.pth import read_state_dict
from mmpretrain.fid.resize import resize_bilinear

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
INPUT_SIZE = 299
FEATURES = 2048
# In the file but not in the pool3 network: the 1008-way classifier, and BatchNorm's step
# counters (absent from files older than torch 0.4.1).
_UNUSED = {"fc.weight": (1008, FEATURES), "fc.bias": (1008,)}
_COUNTER = ".num_batches_tracked"
# FID is compared across papers: float32 everywhere, never TF32 or bfloat16 passes.
_PRECISION = lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BatchNorm(nnx.Module):
  """Inference BatchNorm on running statistics, with torch's names and eps 0.001."""

  def __init__(self, channels: int):
    self.weight = nnx.Param(jnp.ones((channels,)))
    self.bias = nnx.Param(jnp.zeros((channels,)))
    self.running_mean = nnx.BatchStat(jnp.zeros((channels,)))
    self.running_var = nnx.BatchStat(jnp.ones((channels,)))

  def __call__(self, x):
    scale = self.weight[...] * lax.rsqrt(self.running_var[...] + 1e-3)
    return x * scale + (self.bias[...] - self.running_mean[...] * scale)


class BasicConv2d(nnx.Module):
  """torchvision's BasicConv2d: a convolution without bias, BatchNorm, ReLU."""

  def __init__(self, channels_in: int, channels_out: int, kernel, stride=1, padding=0, *,
               rngs: nnx.Rngs):
    kh, kw = _pair(kernel)
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(channels_in, channels_out, (kh, kw), strides=_pair(stride),
                         padding=((ph, ph), (pw, pw)), use_bias=False,
                         precision=_PRECISION, rngs=rngs)
    self.bn = BatchNorm(channels_out)

  def __call__(self, x):
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x, stride: int, padding: int = 0):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def average_pool(x):
  """3×3, stride 1, padding 1, the padded zeros left out of each mean
  (count_include_pad=False, as TensorFlow's graph computes it)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  count = lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, lax.add,
                            (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


class FIDInceptionA(nnx.Module):
  def __init__(self, channels: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(channels, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(channels, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(channels, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(channels, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(average_pool(x))], axis=-1)


class InceptionB(nnx.Module):
  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(channels, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(channels, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        max_pool(x, 2)], axis=-1)


class FIDInceptionC(nnx.Module):
  def __init__(self, channels: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7 = channels_7x7
    self.branch1x1 = BasicConv2d(channels, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(channels, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(channels, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(channels, 192, 1, rngs=rngs)

  def __call__(self, x):
    double = x
    for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                 self.branch7x7dbl_4, self.branch7x7dbl_5):
      double = conv(double)
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
        double,
        self.branch_pool(average_pool(x))], axis=-1)


class InceptionD(nnx.Module):
  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(channels, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(channels, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    seven = self.branch7x7x3_1(x)
    for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      seven = conv(seven)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), seven, max_pool(x, 2)],
                           axis=-1)


class FIDInceptionE(nnx.Module):
  """FIDInceptionE_1 (`pool='average'`) or FIDInceptionE_2 (`pool='max'`: the FID graph
  max-pools in its last block where Inception's paper averages)."""

  def __init__(self, channels: int, pool: str, *, rngs: nnx.Rngs):
    self.pool = pool
    self.branch1x1 = BasicConv2d(channels, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(channels, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(channels, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(channels, 192, 1, rngs=rngs)

  def __call__(self, x):
    single = self.branch3x3_1(x)
    double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = max_pool(x, 1, padding=1) if self.pool == "max" else average_pool(x)
    return jnp.concatenate([
        self.branch1x1(x),
        self.branch3x3_2a(single), self.branch3x3_2b(single),
        self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
        self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
  """uint8 RGB images [B, H, W, 3] of any size -> pool3 features float32 [B, 2048]."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = FIDInceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = FIDInceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = FIDInceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = FIDInceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = FIDInceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = FIDInceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = FIDInceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = FIDInceptionE(1280, "average", rngs=rngs)
    self.Mixed_7c = FIDInceptionE(2048, "max", rngs=rngs)

  def __call__(self, images):
    # pytorch-fid's input: ToTensor's [0, 1], bilinear to 299², then [-1, 1].
    x = images.astype(jnp.float32) / 255.0
    x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, 2)
    x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


def _torch_name(path) -> str:
  *module, leaf = map(str, path)
  return ".".join([*module, "weight" if leaf == "kernel" else leaf])


@functools.cache
def _abstract():
  """The network's graph and its parameters' shapes (traced once: it takes a while)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: FIDInceptionV3(rngs=nnx.Rngs(0))))
  return graphdef, tuple(nnx.to_flat_state(state))


def expected_tensors() -> dict[str, tuple[int, ...]]:
  """Every tensor the weights file must hold, by torch name, with its torch shape."""
  shapes = {}
  for path, leaf in _abstract()[1]:
    shape = leaf.shape
    shapes[_torch_name(path)] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 \
        else shape
  return shapes


def load_inception(path: str) -> FIDInceptionV3:
  """The FID Inception from pytorch-fid's weights file (WEIGHTS_FILE), local or gs://.
  Every tensor is checked by name and shape: a missing, misshapen or unexpected one (such
  as torchvision's ImageNet Inception, a different network) is refused, naming it."""
  if not storage.exists(path):
    raise FileNotFoundError(f"{path}: no such file; download pytorch-fid's weights from "
                            f"{WEIGHTS_URL}")
  tensors = read_state_dict(path)
  expected = expected_tensors()
  for name, shape in {**expected, **_UNUSED}.items():
    if name not in tensors and name not in _UNUSED:
      raise ValueError(f"{path}: no tensor {name} (expected shape {list(shape)}); is this "
                       f"pytorch-fid's {WEIGHTS_FILE}?")
    if name in tensors and tuple(tensors[name].shape) != shape:
      raise ValueError(f"{path}: tensor {name} has shape {list(tensors[name].shape)}, "
                       f"expected {list(shape)}; is this pytorch-fid's {WEIGHTS_FILE}?")
  unexpected = [n for n in tensors if n not in expected and n not in _UNUSED
                and not n.endswith(_COUNTER)]
  if unexpected:
    more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
    raise ValueError(f"{path}: unexpected tensor {unexpected[0]}{more}; is this "
                     f"pytorch-fid's {WEIGHTS_FILE}?")
  graphdef, leaves = _abstract()
  values = {}
  for path_, leaf in leaves:
    value = np.asarray(tensors[_torch_name(path_)], np.float32)
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    values[path_] = leaf.replace(jnp.asarray(value))
  return nnx.merge(graphdef, nnx.from_flat_state(values))
