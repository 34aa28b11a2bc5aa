"""Generation with a trained model through one KV cache: text, images from captions,
captions of images, interleaved documents and world-model rollouts."""
