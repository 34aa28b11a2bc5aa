"""mmpretrain: a JAX-native pretraining stack for native multimodal foundation models."""
__version__ = "0.1.0"
