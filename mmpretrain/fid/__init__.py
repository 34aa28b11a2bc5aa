"""Fréchet Inception Distance as pytorch-fid computes it, in JAX: its Inception-v3 read
from its own weights file (`inception`, `pth`), its input handling (`images`, `resize`),
its statistics and distance (`statistics`), and two image sets scored (`score`, the
`mmpretrain fid` verb). docs/fid.md: the weights, the command and the parity measured
against pytorch-fid."""
