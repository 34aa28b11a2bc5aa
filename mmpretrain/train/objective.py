"""The Transfusion objective, defined once: λ_text·CE + λ_flow·flow MSE (+ z-loss).

Both terms are sums over trained positions divided by batch-wide counts (`normalizers`),
so gradient accumulation over microbatches reproduces the full-batch gradient exactly.
"""
import math

import jax
import jax.numpy as jnp

from mmpretrain import diffusion
from mmpretrain.batch import MODALITY_VISUAL
from mmpretrain.model.transformer import ModelInputs
from mmpretrain.tokenizers.visual import place_frame_tokens


def loss_normalizers(batch) -> dict:
  """Trained-position counts of the whole (global) batch; at least 1 to avoid 0/0."""
  return {"text": jnp.maximum(jnp.sum(batch["text_loss_mask"][:, 1:]), 1).astype(jnp.float32),
          "visual": jnp.maximum(jnp.sum(batch["visual_loss_mask"]), 1).astype(jnp.float32)}


def flow_space(config) -> str:
  """The space the flow loss compares in: loss.flow_space, or the head's own prediction."""
  space = config.loss.flow_space
  return config.diffusion.prediction if space == "prediction" else space


def flow_loss_inputs(visual_pred, inputs: ModelInputs, config):
  """The head's output re-expressed in the flow loss's space (x-prediction with a v-space
  loss weighs the x error by 1/t², as in JiT)."""
  dcfg = config.diffusion
  pred = diffusion.head_prediction(visual_pred, inputs.visual_latents, inputs.timesteps, dcfg)
  return diffusion.convert(pred, inputs.visual_latents, inputs.timesteps, dcfg.prediction,
                           flow_space(config), dcfg.min_t)


def text_inputs(batch) -> ModelInputs:
  """What a text-only model (rows with no frames) reads of `batch`."""
  return ModelInputs(tokens=batch["tokens"], modality=batch["modality"],
                     segment_ids=batch["segment_ids"], block_ids=batch["block_ids"],
                     positions=batch["positions"], visual_latents=None, timesteps=None)


def noised_inputs(batch, latent_tokens, row_rngs, dcfg, time_shift: float, space: str = "x"):
  """Places latent tokens at their slots and noises the generated frames.

  One t per frame (diffusion-forcing style); frames that are only context (image before
  caption, a world model's past frames) get t ~ U(0, dcfg.context_noise) (0: clean), so a
  model that will read its own imperfect frames has seen slightly noisy ones. Randomness
  comes from one key per row, so a row's noise does not depend on how the batch is split
  into microbatches or shards.
  Returns (ModelInputs, the flow target in `space` [B, L, patch_dim]).
  """
  frame_slot = jnp.maximum(batch["frame_slot"], 0)
  num_frames = batch["frames"].shape[1]
  tokens_per_frame = latent_tokens.shape[1] // num_frames
  x = place_frame_tokens(latent_tokens, frame_slot)

  def row_noise(key):
    time_key, context_key, noise_key = jax.random.split(key, 3)
    frame_t = diffusion.sample_time(time_key, (num_frames,), mean=dcfg.logit_normal_mean,
                                    std=dcfg.logit_normal_std, shift=time_shift)
    context_t = dcfg.context_noise * jax.random.uniform(context_key, (num_frames,))
    return frame_t, context_t, jax.random.normal(noise_key, x.shape[1:], jnp.float32)

  frame_t, context_t, noise = jax.vmap(row_noise)(row_rngs)
  frame_of_slot = frame_slot // tokens_per_frame
  generated = batch["visual_loss_mask"]
  t = jnp.where(generated, jnp.take_along_axis(frame_t, frame_of_slot, axis=1),
                jnp.take_along_axis(context_t, frame_of_slot, axis=1))
  t = jnp.where(batch["modality"] == MODALITY_VISUAL, t, 0.0)
  inputs = ModelInputs(
      tokens=batch["tokens"], modality=batch["modality"], segment_ids=batch["segment_ids"],
      block_ids=batch["block_ids"], positions=batch["positions"],
      visual_latents=diffusion.add_noise(x, noise, t), timesteps=t, generated=generated)
  return inputs, diffusion.flow_target(x, noise, space)


def frame_change_weights(batch, latent_tokens, lcfg):
  """[B, L] flow-loss weights: lcfg.frame_change_weight where a generated token differs
  from the same token of the previous frame of its document, 1 elsewhere.

  A frame's document is the segment of its tokens; a document's first frame (an image to
  draw from its caption) has no previous frame and keeps weight 1.
  """
  num_frames = batch["frames"].shape[1]
  tokens_per_frame = latent_tokens.shape[1] // num_frames
  visual = batch["modality"] == MODALITY_VISUAL
  frame_of_position = jnp.where(visual, jnp.maximum(batch["frame_slot"], 0) // tokens_per_frame, 0)
  document = jnp.where(visual, batch["segment_ids"], 0)
  frame_document = jax.vmap(lambda f, doc: jnp.zeros(num_frames, doc.dtype).at[f].max(doc))(
      frame_of_position, document)                                         # [B, F]; 0: unused
  follows = (frame_document[:, 1:] == frame_document[:, :-1]) & (frame_document[:, 1:] > 0)
  follows = jnp.pad(follows, ((0, 0), (1, 0)))                             # [B, F]
  previous = jnp.roll(latent_tokens, tokens_per_frame, axis=1)
  change = jnp.mean(jnp.square(latent_tokens - previous), axis=-1)        # [B, F·T]
  changed = (change > lcfg.frame_change_threshold) & jnp.repeat(follows, tokens_per_frame, axis=1)
  changed_at = jnp.take_along_axis(changed, jnp.maximum(batch["frame_slot"], 0), axis=1)
  changed_at &= visual & batch["visual_loss_mask"]
  return jnp.where(changed_at, lcfg.frame_change_weight, 1.0).astype(jnp.float32)


def transfusion_loss(logits, visual_pred, flow_target, batch, normalizers, byte_lengths, lcfg,
                     flow_weights=None):
  """Returns (scalar loss, metrics of sums) for one (micro)batch.

  Logits at position i predict tokens[i + 1]; text_loss_mask[i + 1] says whether that
  target is trained. The flow head predicts the target of its own position (no flow
  term where `visual_pred` is None: a text-only model). `flow_weights`
  ([B, L], e.g. `frame_change_weights`) scales each position's flow term in the loss; the
  logged flow MSE stays the unweighted mean, comparable across weightings.
  """
  # Shift the (small) targets left rather than slicing the (large) logits; the last
  # position has no target and is masked out.
  targets = jnp.pad(batch["tokens"][:, 1:], ((0, 0), (0, 1)))
  text_mask = jnp.pad(batch["text_loss_mask"][:, 1:], ((0, 0), (0, 1))).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  ce = log_z - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ce_sum = jnp.sum(ce * text_mask)
  z_sum = jnp.sum(jnp.square(log_z) * text_mask)
  visual_mask = (batch["visual_loss_mask"]
                 & (batch["modality"] == MODALITY_VISUAL)).astype(jnp.float32)
  if visual_pred is None:                    # a text-only model
    flow_sum = trained_flow_sum = jnp.zeros((), jnp.float32)
  else:
    mse = jnp.mean(jnp.square(visual_pred - flow_target), axis=-1)
    flow_sum = jnp.sum(mse * visual_mask)
    trained_flow_sum = (flow_sum if flow_weights is None
                        else jnp.sum(mse * visual_mask * flow_weights))
  loss = (lcfg.text_weight * ce_sum / normalizers["text"]
          + lcfg.flow_weight * trained_flow_sum / normalizers["visual"]
          + lcfg.z_loss * z_sum / normalizers["text"])
  metrics = {"text_ce_sum": ce_sum, "flow_mse_sum": flow_sum, "z_sum": z_sum,
             "text_bytes": jnp.sum(byte_lengths[targets] * text_mask),
             "text_tokens": jnp.sum(text_mask), "visual_tokens": jnp.sum(visual_mask)}
  return loss, metrics


def add_moe_terms(loss, sums: dict, moe_stats: dict, lcfg, microbatches: int):
  """Adds the router losses (means over MoE layers) and their metrics to one microbatch.

  Divided by the microbatch count so that summing over microbatches gives their mean.
  """
  load_balance = jnp.mean(moe_stats["load_balance"])
  router_z = jnp.mean(moe_stats["router_z"])
  loss = loss + (lcfg.moe_load_balance * load_balance + lcfg.moe_router_z * router_z) / microbatches
  sums = dict(sums, moe_load_balance=load_balance / microbatches,
              moe_router_z=router_z / microbatches,
              moe_drop_rate=jnp.mean(moe_stats["drop_rate"]) / microbatches,
              expert_load=jax.lax.stop_gradient(moe_stats["expert_load"]),
              kind_load=jax.lax.stop_gradient(moe_stats["kind_load"]))
  return loss, sums


# Sums that add up over (micro)batches; the MoE terms are per-batch means instead.
ADDITIVE_SUMS = ("text_ce_sum", "flow_mse_sum", "z_sum", "text_tokens", "visual_tokens",
                 "text_bytes")


def summarize(sums: dict, lcfg) -> dict:
  """Turns accumulated sums into the logged means (text CE, flow MSE, bits per byte)."""
  text_tokens = jnp.maximum(sums["text_tokens"], 1.0)
  visual_tokens = jnp.maximum(sums["visual_tokens"], 1.0)
  text_loss = sums["text_ce_sum"] / text_tokens
  flow_loss = sums["flow_mse_sum"] / visual_tokens
  z_loss = sums["z_sum"] / text_tokens
  metrics = {
      "loss": lcfg.text_weight * text_loss + lcfg.flow_weight * flow_loss + lcfg.z_loss * z_loss,
      "text_loss": text_loss, "flow_loss": flow_loss, "z_loss": z_loss,
      "text_bits_per_byte": sums["text_ce_sum"] / math.log(2) / jnp.maximum(sums["text_bytes"], 1),
      "text_tokens": sums["text_tokens"], "visual_tokens": sums["visual_tokens"],
  }
  if "moe_load_balance" in sums:
    metrics["loss"] += (lcfg.moe_load_balance * sums["moe_load_balance"]
                        + lcfg.moe_router_z * sums["moe_router_z"])
    metrics.update({k: v for k, v in sums.items() if k.startswith("moe_")})
  return metrics
