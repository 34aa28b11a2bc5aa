"""PyTorch state-dict files (`torch.save` of a `state_dict()`, .pth) read into numpy
without PyTorch: both layouts torch writes, the zip archive (torch 1.6 and later) and the
legacy stream of pickles before it, whichever the file at hand was saved with.

The pickle is read by an unpickler that builds only ordered dicts and tensors: any other
class or function the file names is refused, so a file cannot run code on load.
"""
import collections
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np

from mmpretrain import storage

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
           "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
           "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _StorageType:
  """What a pickled `torch.FloatStorage` (…) stands for: the dtype of its bytes."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Unpickler(pickle.Unpickler):
  """Builds ordered dicts and tensors over the storages `load_storage(pid)` returns; with
  `tensors=False` it only walks the pickle (tensors become None)."""

  def __init__(self, file, path: str, load_storage, tensors: bool = True):
    super().__init__(file)
    self.path, self.load_storage, self.tensors = path, load_storage, tensors

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) in (("torch._utils", "_rebuild_tensor"),
                          ("torch._utils", "_rebuild_tensor_v2")):
      return self.rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return lambda data, *_: data
    if module == "torch" and name in _DTYPES:
      return _StorageType(_DTYPES[name])
    raise ValueError(f"{self.path}: not a plain PyTorch state dict (it refers to "
                     f"{module}.{name})")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)) or self.load_storage is None:
      raise ValueError(f"{self.path}: unknown persistent object {str(pid)[:60]}")
    return self.load_storage(pid)

  def rebuild_tensor(self, storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor(_v2): a strided view of a storage, copied out."""
    if not self.tensors:
      return None
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
    if offset < 0 or min(stride, default=0) < 0 or (all(size) and last >= storage.size):
      raise ValueError(f"{self.path}: a tensor reaches past its storage (a corrupt file)")
    itemsize = storage.dtype.itemsize
    return np.array(np.lib.stride_tricks.as_strided(
        storage[offset:], tuple(size), tuple(s * itemsize for s in stride)))


def _read_zip(file, path: str):
  with zipfile.ZipFile(file) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a zip archive, but not one torch.save wrote (no data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") != b"little":
      raise ValueError(f"{path}: saved big-endian, which this reader does not convert")

    def load_storage(pid):
      _, storage_type, key, _, numel = pid[:5]
      data = archive.read(f"{prefix}data/{key}")
      if len(data) < numel * storage_type.dtype.itemsize:
        raise ValueError(f"{path}: truncated (storage {key} ends early)")
      return np.frombuffer(data, storage_type.dtype, count=numel)

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), path, load_storage).load()


def _read_legacy(file, path: str):
  """torch's format before 1.6: magic number, protocol, system info, the object pickled
  with storage references, the storage keys, then each storage's element count and bytes
  in the order of those keys. The bytes follow the pickle that uses them, so the pickle is
  walked once to reach them and read again over them."""
  plain = lambda: _Unpickler(file, path, None, tensors=False).load()
  try:
    magic = plain()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a PyTorch file (neither a zip archive nor torch's "
                     "legacy pickle stream)") from e
  if magic != _LEGACY_MAGIC:
    raise ValueError(f"{path}: not a PyTorch file (no torch.save magic number)")
  plain()                                                   # protocol version
  if not plain().get("little_endian", True):
    raise ValueError(f"{path}: saved big-endian, which this reader does not convert")
  start, dtypes = file.tell(), {}

  def note_storage(pid):
    if len(pid) > 5 and pid[5] is not None:
      raise ValueError(f"{path}: storage views (torch before 0.4) are not supported")
    dtypes[pid[2]] = pid[1].dtype

  _Unpickler(file, path, note_storage, tensors=False).load()
  arrays = {}
  for key in plain():
    nbytes = int.from_bytes(file.read(8), "little") * dtypes[key].itemsize
    data = file.read(nbytes)
    if len(data) != nbytes:
      raise ValueError(f"{path}: truncated (storage {key} ends early)")
    arrays[key] = np.frombuffer(data, dtypes[key])
  file.seek(start)
  return _Unpickler(file, path, lambda pid: arrays[pid[2]]).load()


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a saved state dict, by name, as numpy arrays of their dtypes."""
  with storage.open_read(path) as file:
    head = file.read(4)
    file.seek(0)
    try:
      state = (_read_zip if head == b"PK\x03\x04" else _read_legacy)(file, path)
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError) as e:
      raise ValueError(f"{path}: not a readable PyTorch file ({type(e).__name__}: "
                       f"{str(e)[:80]})") from e
  if not isinstance(state, dict):
    raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
  return dict(state)
