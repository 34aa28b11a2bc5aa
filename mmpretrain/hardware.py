"""What each accelerator can do: HBM and dense bf16 matmul peak per chip (TPU topologies
for `mmpretrain compile`; the peaks for MFU in training logs)."""
import dataclasses

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: int
  peak_bf16_flops: float       # dense matmul peak per chip
  cores_per_chip: int          # in GCP's names (v5p-8 is 8 TensorCores, 4 chips)
  grids: dict                  # chips -> the topology's shape


_GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}
CHIPS = {"v4": Chip(32 * GIB, 275e12, 2, _GRIDS_3D), "v5p": Chip(95 * GIB, 459e12, 2, _GRIDS_3D),
         "v5e": Chip(16 * GIB, 197e12, 1, _GRIDS_2D), "v6e": Chip(32 * GIB, 918e12, 1, _GRIDS_2D)}

# jax's device_kind -> dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
_PEAKS = (("TPU v4", CHIPS["v4"].peak_bf16_flops), ("TPU v5 lite", CHIPS["v5e"].peak_bf16_flops),
          ("TPU v5", CHIPS["v5p"].peak_bf16_flops), ("TPU v6 lite", CHIPS["v6e"].peak_bf16_flops),
          ("H200", 989e12), ("H100", 989e12), ("A100", 312e12))


def peak_bf16_flops(device_kind: str) -> float | None:
  """The dense bf16 peak of a device kind as jax names it ('TPU v5 lite', 'NVIDIA H100
  80GB HBM3', ...); None where unknown (CPUs: their peak depends on the machine)."""
  for name, peak in _PEAKS:
    if name in device_kind:
      return peak
  return None
