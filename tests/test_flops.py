"""FLOP accounting: active matmul parameters against the layer-by-layer formula."""
import base
from mmpretrain.model.moe import expert_count
from mmpretrain.scaling.flops import active_matmul_params, train_flops_per_token
from mmpretrain.tokenizers.visual import make_representation, patch_dim


def dense_formula(c) -> int:
  m = c.model
  patch = patch_dim(make_representation(c).latent_grid, c.visual.patch_size)
  attention = 2 * m.d_model * m.num_heads * m.head_dim + 2 * m.d_model * m.num_kv_heads * m.head_dim
  ffn = 3 * m.d_model * m.mlp_dim
  heads = 2 * m.d_model * patch + m.d_model * m.vocab_size          # visual in/out, LM head
  time_embed = 256 * m.d_model + m.d_model * m.d_model
  return m.num_layers * (attention + ffn) + heads + time_embed


def test_dense_count_matches_the_formula_and_flops_add_attention():
  c = base.get_config()
  assert active_matmul_params(c) == dense_formula(c)
  m = c.model
  assert train_flops_per_token(c) == (6 * dense_formula(c) + 12 * m.num_layers * m.num_heads
                                      * m.head_dim * c.data.seq_len)


def test_modality_ffn_counts_one_ffn_per_token():
  c = base.get_config()
  c.model.modality_ffn = True
  assert active_matmul_params(c) == dense_formula(c)


def test_moe_counts_k_experts_and_the_router():
  c = base.get_config()
  m = c.model
  m.moe.update({"num_experts": 8, "experts_per_token": 2, "expert_mlp_dim": m.mlp_dim // 2,
                "granularity": 4, "first_dense_layers": 2, "shared_experts": "per_modality",
                "shared_mlp_dim": 128})
  moe_layers = m.num_layers - 2
  # k·G experts of hidden/G: the dense FFN's 3·d·mlp_dim; plus one shared expert per token
  # (text or vision, never both) and the router's d × E.
  extra = moe_layers * (3 * m.d_model * 128 + m.d_model * expert_count(m.moe))
  assert active_matmul_params(c) == dense_formula(c) + extra
