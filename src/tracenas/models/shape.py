"""`ModelShape`: the counts a search needs about a model (layers, heads, widths, parameters per unit).

Torch-free, so the genome and the strategies can use it without importing torch; `ModelAdapter.shape()`
reads it off a live model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Architecture facts needed to count parameters and build masks, read off the live modules."""

    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    fixed_params: int  # embeddings + final norm + untied lm_head: present whatever the genome
    layer_fixed_params: int  # norms and output biases of one kept block (= attn_fixed + mlp_fixed)
    q_head_params: int  # cost of one query head (q rows + bias + o columns)
    kv_head_params: int  # cost of one KV head (k and v rows + biases)
    mlp_channel_params: int  # cost of one MLP channel (gate/up rows + biases + down column)
    embedding_params: int  # input embedding + untied output head
    attn_fixed_params: int = 0  # input norm, o_proj bias, per-head-dim norms: gone with a removed attention
    mlp_fixed_params: int = 0  # post-attention norm, down_proj bias: gone with a removed MLP

    @property
    def is_gqa(self) -> bool:
        return self.num_kv_heads != self.num_heads

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def attn_units(self) -> int:
        """Attention units the search counts: query heads per KV group (GQA, every group keeps the same number),
        or heads (MHA)."""
        return self.group_size if self.is_gqa else self.num_heads

    @property
    def heads_per_unit(self) -> int:
        """Query heads one attention unit stands for: one per KV group (GQA), or one (MHA)."""
        return self.num_kv_heads if self.is_gqa else 1

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
