"""The optional adversarial term of the RAE decoder: a small PatchGAN discriminator and
hinge losses, trained in the same optimizer step as the decoder.

`adversarial_terms` returns generator + discriminator losses whose sum has the right
gradients for both players: the generator term sees the discriminator's parameters
through stop_gradient, the discriminator term sees the reconstruction through it.
"""
import jax
import jax.numpy as jnp
from flax import nnx


class PatchDiscriminator(nnx.Module):
  """Images in [-1, 1] [B, H, W, C] -> a realness logit per patch [B, H/4, W/4, 1]."""

  def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, width, (4, 4), strides=2, padding=1, rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (4, 4), strides=2, padding=1, rngs=rngs)
    self.norm = nnx.GroupNorm(2 * width, num_groups=8, rngs=rngs)
    self.out = nnx.Conv(2 * width, 1, (3, 3), padding=1, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.leaky_relu(self.conv1(x), 0.2)
    return self.out(jax.nn.leaky_relu(self.norm(self.conv2(x)), 0.2))


def adversarial_terms(discriminator: PatchDiscriminator, real, fake):
  """(generator loss −E[D(fake)], discriminator hinge loss) with separated gradients."""
  graphdef, state = nnx.split(discriminator)
  frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
  generator = -jnp.mean(frozen(fake))
  critic = (jnp.mean(jax.nn.relu(1.0 - discriminator(real)))
            + jnp.mean(jax.nn.relu(1.0 + discriminator(jax.lax.stop_gradient(fake)))))
  return generator, critic
