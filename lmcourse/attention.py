"""Lesson 03, attention: masked scaled dot-product attention, causal and padding masks,
multi-head attention (split and merge heads), sinusoidal positional encodings, and the KV cache
that lets a decoder attend to earlier tokens without computing their keys and values again."""

from __future__ import annotations

import math

import torch
from torch import nn


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    return_weights: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k) + mask) v, with a defined result for fully masked rows.

    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v).
    mask: a bool tensor broadcastable to (..., T_q, T_k), True = may attend (the meaning of a
    boolean `attn_mask` in torch.nn.functional.scaled_dot_product_attention); a float mask is
    added to the scores, as torch does. `is_causal` adds `causal_mask(T_q, T_k)` (aligned top-left,
    as torch aligns it). A query row that may attend to nothing gets all-zero weights and an
    all-zero output (torch returns NaN there). `dropout_p` drops attention weights (pass 0 in eval).
    Returns out (..., T_q, d_v), or (out, weights (..., T_q, T_k)) when `return_weights`.
    """
    d_k = q.size(-1)
    t_q, t_k = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)

    allowed = None  # bool, True = may attend
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = mask
        else:
            scores = scores + mask  # additive mask: 0 keeps, -inf removes
    if is_causal:
        causal = causal_mask(t_q, t_k, device=q.device)  # (T_q, T_k)
        allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))

    # Softmax written out so that a row of only -inf gives zeros instead of 0/0 = NaN.
    row_max = scores.amax(dim=-1, keepdim=True).detach()  # (..., T_q, 1); shifting is exact
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)  # masked entries: exp(-inf) = 0
    total = e.sum(dim=-1, keepdim=True)  # (..., T_q, 1), 0 for a fully masked row
    weights = e / torch.where(total > 0, total, torch.ones_like(total))
    if dropout_p > 0.0:
        weights = torch.nn.functional.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., T_q, d_v)
    return (out, weights) if return_weights else out


def causal_mask(T_q: int, T_k: int | None = None, device: torch.device | str | None = None,
                offset: int = 0) -> torch.Tensor:
    """Bool (T_q, T_k) mask, True on and below the diagonal: query i may attend to keys 0..i.

    `offset` says where the queries sit: query i is the token at position i + offset, so it may
    attend to keys 0..i + offset (with a KV cache of `offset` earlier tokens, offset = T_k - T_q).
    """
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool (B, 1, 1, T) key mask from a (B, T) 0/1 transformers-style mask (1 = real token)."""
    return attention_mask.bool()[:, None, None, :]  # broadcasts over heads and query positions


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, n_heads, T, D // n_heads): each head gets its own slice of the features."""
    B, T, D = x.shape
    if D % n_heads:
        raise ValueError(f"d_model={D} is not divisible by n_heads={n_heads}.")
    x = x.view(B, T, n_heads, D // n_heads)  # (B, T, n_heads, d_head)
    return x.transpose(1, 2)  # (B, n_heads, T, d_head)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n_heads, T, d_head) -> (B, T, n_heads * d_head), the inverse of split_heads."""
    B, H, T, d_head = x.shape
    x = x.transpose(1, 2)  # (B, T, n_heads, d_head)
    return x.reshape(B, T, H * d_head)  # (B, T, D); reshape copies since x is not contiguous


class KVCache:
    """The keys and values every attention layer computed for the tokens processed so far.

    A decoder generates one token at a time, and causal attention never changes what an earlier
    token's key and value are: compute them once, keep them here, and feed the model only the new
    token. Layer i holds keys and values of shape (B, H, T, d_head); `update` appends a call's.
    transformers' equivalent is `DynamicCache` (the `cache=` argument, `past_key_values` before).
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []    # per layer (B, H, T, d_head)
        self.values: list[torch.Tensor] = []  # per layer (B, H, T, d_head)

    @property
    def length(self) -> int:
        """Number of tokens cached (0 when empty)."""
        return self.keys[0].shape[-2] if self.keys else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's keys and values (B, H, T_new, d_head) to layer `layer`'s; return all
        of that layer's, (B, H, T_past + T_new, d_head) each."""
        if layer == len(self.keys):  # the first call fills the layers in order
            self.keys.append(k)
            self.values.append(v)
        elif layer < len(self.keys):
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=-2)  # (B, H, T_past + T_new, d_head)
            self.values[layer] = torch.cat([self.values[layer], v], dim=-2)
        else:
            raise ValueError(f"KVCache has {len(self.keys)} layers; layer {layer} must come after "
                             "the ones before it (call the layers in order).")
        return self.keys[layer], self.values[layer]

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` (B_new,), in that order, repeats allowed (beam search)."""
        self.keys = [k.index_select(0, index.to(k.device)) for k in self.keys]
        self.values = [v.index_select(0, index.to(v.device)) for v in self.values]

    def nbytes(self) -> int:
        """Bytes the cached tensors take: 2 * n_layers * B * T * d_model * bytes per element."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self.keys)}, tokens={self.length}, {self.nbytes():,} bytes)"


def _and_mask(mask: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
    """`mask` (bool, True = may attend; or float, added to the scores) restricted to `allowed`."""
    if mask is None:
        return allowed
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, float("-inf"))  # an additive mask: -inf removes


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, batch first; equals nn.MultiheadAttention given the same weights."""

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}.")
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        return_weights: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> (B, T, D); with `return_weights`, also the per-head weights (B, H, T, T).

        mask: bool, True = may attend, broadcastable to (B, H, T, T): `padding_mask(am)` gives
        (B, 1, 1, T), `causal_mask(T)` gives (T, T). Unlike nn.MultiheadAttention, the weights
        are not averaged over heads.

        With a `cache`, x holds only the new tokens: their keys and values are appended to the
        cache's layer `layer`, and the queries attend to every cached token as well (keys
        T_past + T; a mask then covers them all, (B, 1, 1, T_past + T) for padding).
        """
        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, d_head)
        k = split_heads(self.k_proj(x), self.n_heads)  # (B, H, T, d_head)
        v = split_heads(self.v_proj(x), self.n_heads)  # (B, H, T, d_head)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, T_past + T, d_head) each
            t_q, t_k = q.shape[-2], k.shape[-2]
            if is_causal and t_k != t_q:
                # the new tokens are the last t_q positions: query i is token t_k - t_q + i, and
                # torch's is_causal (aligned top-left) would hide most of the cached keys from it
                mask = _and_mask(mask, causal_mask(t_q, t_k, device=x.device, offset=t_k - t_q))
                is_causal = False
        out, weights = scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, return_weights=True,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, d_head), (B, H, T, T)
        out = self.out_proj(merge_heads(out))  # (B, T, D)
        return (out, weights) if return_weights else out

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> MultiHeadAttention:
        """A MultiHeadAttention with the weights of `mha` (same embed dim for q, k, v; no bias_kv).

        The weights do not depend on `mha.batch_first`; this module always takes (B, T, D).
        """
        if not mha._qkv_same_embed_dim or mha.bias_k is not None:
            raise ValueError("from_torch supports nn.MultiheadAttention with kdim = vdim = "
                             "embed_dim and add_bias_kv=False.")
        D = mha.embed_dim
        bias = mha.in_proj_bias is not None
        new = cls(D, mha.num_heads, bias=bias, dropout=mha.dropout)
        new = new.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            w_q, w_k, w_v = mha.in_proj_weight.chunk(3, dim=0)  # each (D, D)
            new.q_proj.weight.copy_(w_q)
            new.k_proj.weight.copy_(w_k)
            new.v_proj.weight.copy_(w_v)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                b_q, b_k, b_v = mha.in_proj_bias.chunk(3, dim=0)  # each (D,)
                new.q_proj.bias.copy_(b_q)
                new.k_proj.bias.copy_(b_k)
                new.v_proj.bias.copy_(b_v)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new


def sinusoidal_positions(T: int, d_model: int) -> torch.Tensor:
    """(T, d_model) encoding of "Attention is all you need": PE[p, 2i] = sin(p / 10000^(2i/d)),
    PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d/2),), the even dims 2i
    angle = pos / 10000.0 ** (two_i / d_model)  # (T, ceil(d/2))
    pe = torch.zeros(T, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # odd d_model: one fewer cos column
    return pe.float()
