"""Lesson 04, the transformer: layer norm, the GELU feed-forward network, residual blocks (post-LN
for BERT, pre-LN for GPT), a BERT encoder and a GPT decoder built from the course's parts,
activation checkpointing for both, loaders that copy the weights of `transformers`' BertModel and
GPT-2 into them (and back), and parameter and FLOP counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from lmcourse.attention import KVCache, MultiHeadAttention, padding_mask

# transformers' names of the activations the course implements -> our `approximate` argument
_HF_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


# --------------------------------------------------------------------------- layer norm


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Normalise each vector along the last dim to mean 0 and variance 1, then scale and shift."""
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # (..., 1) biased: divide by D, not D-1
    y = (x - mean) / torch.sqrt(var + eps)  # eps inside the sqrt, as torch and transformers do
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """Layer normalisation written out; equals nn.LayerNorm(d_model, eps) given the same weights."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))  # gain, starts as the identity
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# --------------------------------------------------------------------------- feed-forward


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU(x) = x * Phi(x) (Phi the standard normal CDF); 'tanh' gives GPT-2's approximation."""
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}.")


class FeedForward(nn.Module):
    """Position-wise feed-forward network: Linear(D, d_ff) -> GELU -> Linear(d_ff, D) -> dropout."""

    def __init__(self, d_model: int, d_ff: int, approximate: str = "none", dropout: float = 0.0):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}.")
        self.approximate = approximate
        self.fc1 = nn.Linear(d_model, d_ff)  # expand: each position on its own
        self.fc2 = nn.Linear(d_ff, d_model)  # project back to the residual stream
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, T, d_ff)
        # F.gelu is our `gelu` fused into one kernel (tests prove them equal); cheaper in memory.
        h = F.gelu(h, approximate=self.approximate)
        return self.dropout(self.fc2(h))  # (B, T, D)


# --------------------------------------------------------------------------- blocks


class EncoderBlock(nn.Module):
    """Post-LN encoder block (BERT): x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, eps: float = 1e-12, approximate: str = "none"):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout)
        self.attn_dropout = nn.Dropout(dropout)  # on the attention's output, before the residual
        self.ln1 = LayerNorm(d_model, eps)  # after the attention's residual sum
        self.ffn = FeedForward(d_model, d_ff, approximate, dropout)
        self.ln2 = LayerNorm(d_model, eps)  # after the feed-forward's residual sum

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), mask bool broadcastable to (B, H, T, T), True = may attend -> (B, T, D)."""
        x = self.ln1(x + self.attn_dropout(self.attn(x, mask=mask)))
        return self.ln2(x + self.ffn(x))


class DecoderBlock(nn.Module):
    """Pre-LN causal decoder block (GPT-2): x = x + Attn(LN(x)); x = x + FFN(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, eps: float = 1e-5, approximate: str = "tanh"):
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)  # before the attention; the residual path stays raw
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.ln2 = LayerNorm(d_model, eps)  # before the feed-forward
        self.ffn = FeedForward(d_model, d_ff, approximate, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x (B, T, D); mask (e.g. padding) is combined with the causal mask -> (B, T, D).

        With a `cache`, x holds the new tokens only; the attention also sees the cached ones and
        adds the new tokens' keys and values to the cache's layer `layer`.
        """
        h = self.attn(self.ln1(x), mask=mask, is_causal=True, cache=cache, layer=layer)
        x = x + self.attn_dropout(h)
        return x + self.ffn(self.ln2(x))


# --------------------------------------------------------------------------- activation checkpointing


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None,
               checkpointing: bool = False) -> torch.Tensor:
    """x (B, T, D) through each block in turn -> (B, T, D).

    With `checkpointing` (and gradients on), the backward pass keeps only each block's input
    instead of every activation inside it (attention weights (B, H, T, T), the d_ff-wide hidden
    layer, ...), and runs the block's forward again to get them: memory for the activations of one
    block instead of all, for about one more forward pass of time. The random state is saved and
    restored, so dropout draws the same masks the second time: loss and gradients are unchanged.
    """
    for block in blocks:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, mask, use_reentrant=False)
        else:
            x = block(x, mask)
    return x


class CheckpointingMixin:
    """`gradient_checkpointing_enable()` / `_disable()` with transformers' names, for the course's
    models (the flag their forward passes to `run_blocks`)."""

    gradient_checkpointing: bool = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Any = None) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every activation for the backward pass again (the default)."""
        self.gradient_checkpointing = False


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch activation checkpointing on (or off) in `model`, in place; returns it.

    Works for the course's Bert and GPT, for `transformers` models that support it (BertModel,
    BertForMaskedLM, GPT-2, ...: non-reentrant, through their own switch) and for any model
    holding one of those (a classifier around an encoder).
    """
    def visit(module: nn.Module) -> bool:
        if isinstance(module, CheckpointingMixin):
            module.gradient_checkpointing = enabled
            return True
        if getattr(module, "supports_gradient_checkpointing", False):
            _set_hf_checkpointing(module, enabled)  # it switches its own submodules
            return True
        return any([visit(child) for child in module.children()])  # every child, no short cut

    if not visit(model):
        raise TypeError(
            f"{type(model).__name__} holds no model with activation checkpointing: use the "
            "course's Bert or GPT (lm.transformer) or a transformers model that supports it, or "
            "wrap your own blocks with torch.utils.checkpoint.checkpoint.")
    return model


def is_gradient_checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on in `model` (or in a model it holds)."""
    for module in model.modules():
        if isinstance(module, CheckpointingMixin) and module.gradient_checkpointing:
            return True
        if getattr(module, "supports_gradient_checkpointing", False):
            # transformers 5 names the property is_activation_checkpointing (the old name warns)
            name = ("is_activation_checkpointing" if hasattr(module, "is_activation_checkpointing")
                    else "is_gradient_checkpointing")
            if getattr(module, name):
                return True
    return False


def _set_hf_checkpointing(model: nn.Module, enabled: bool) -> None:
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_* (the old names
    # warn); non-reentrant checkpointing works when the inputs need no gradient, and under DDP
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if enabled:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


# --------------------------------------------------------------------------- BERT


@dataclass
class BertConfig:
    """Sizes of a BERT encoder (defaults: BERT-base)."""

    vocab_size: int = 30522      # WordPiece vocabulary size
    d_model: int = 768           # hidden size: the width of the residual stream
    n_layers: int = 12           # number of encoder blocks
    n_heads: int = 12            # attention heads per block; d_model must divide by it
    d_ff: int = 3072             # inner width of the feed-forward network (4 * d_model in BERT)
    max_positions: int = 512     # longest sequence: rows of the learned position embedding
    type_vocab_size: int = 2     # token types (segment A / B)
    dropout: float = 0.1         # dropout on embeddings and on each sub-layer's output
    attn_dropout: float = 0.1    # dropout on the attention weights
    eps: float = 1e-12           # layer-norm epsilon (BERT's value)
    approximate: str = "none"    # GELU: 'none' = exact erf form (BERT), 'tanh' = approximation
    pad_token_id: int = 0        # id of [PAD] (its embedding row is not special in the forward)
    pooler: bool = True          # add BERT's pooler (dense + tanh on the [CLS] vector)

    @classmethod
    def from_hf(cls, hf: Any) -> BertConfig:
        """The same sizes as a transformers BertConfig."""
        if getattr(hf, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("Only absolute position embeddings are supported, "
                             f"got {hf.position_embedding_type!r}.")
        if hf.hidden_act not in _HF_ACTIVATIONS:
            raise ValueError(f"Unsupported activation {hf.hidden_act!r}; "
                             f"supported: {sorted(_HF_ACTIVATIONS)}.")
        return cls(
            vocab_size=hf.vocab_size, d_model=hf.hidden_size, n_layers=hf.num_hidden_layers,
            n_heads=hf.num_attention_heads, d_ff=hf.intermediate_size,
            max_positions=hf.max_position_embeddings, type_vocab_size=hf.type_vocab_size,
            dropout=hf.hidden_dropout_prob, attn_dropout=hf.attention_probs_dropout_prob,
            eps=hf.layer_norm_eps, approximate=_HF_ACTIVATIONS[hf.hidden_act],
            pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        )

    def to_hf(self) -> Any:
        """The equivalent transformers BertConfig."""
        from transformers import BertConfig as HFBertConfig

        return HFBertConfig(
            vocab_size=self.vocab_size, hidden_size=self.d_model, num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads, intermediate_size=self.d_ff,
            max_position_embeddings=self.max_positions, type_vocab_size=self.type_vocab_size,
            hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.attn_dropout,
            layer_norm_eps=self.eps, pad_token_id=self.pad_token_id,
            hidden_act="gelu" if self.approximate == "none" else "gelu_pytorch_tanh",
        )


class BertEmbeddings(nn.Module):
    """Word + learned position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.ln = LayerNorm(cfg.d_model, cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, D)."""
        T = input_ids.shape[1]
        if T > self.position.num_embeddings:
            raise ValueError(f"Sequence of {T} tokens is longer than max_positions="
                             f"{self.position.num_embeddings}.")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # everything is segment A
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(pos)  # (B, T, D)
        return self.dropout(self.ln(x))


class Bert(CheckpointingMixin, nn.Module):
    """A BERT encoder: embeddings, then n_layers post-LN encoder blocks (and an optional pooler)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.blocks = nn.ModuleList(
            EncoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout,
                         cfg.eps, cfg.approximate)
            for _ in range(cfg.n_layers)
        )
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T) 1 = token, 0 = padding -> last hidden states (B, T, D)."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, T)
        return run_blocks(self.blocks, x, mask, self.gradient_checkpointing)  # (B, T, D)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooled output: tanh(dense(h[CLS])), (B, T, D) -> (B, D)."""
        if self.pooler is None:
            raise ValueError("This Bert has no pooler (BertConfig(pooler=False)).")
        return torch.tanh(self.pooler(hidden[:, 0]))


# --------------------------------------------------------------------------- GPT


@dataclass
class GPTConfig:
    """Sizes of a GPT decoder (defaults: GPT-2 small)."""

    vocab_size: int = 50257      # BPE vocabulary size
    block_size: int = 1024       # longest context: rows of the learned position embedding
    d_model: int = 768           # width of the residual stream
    n_layers: int = 12           # number of decoder blocks
    n_heads: int = 12            # attention heads per block; d_model must divide by it
    d_ff: int = 3072             # inner width of the feed-forward network (4 * d_model in GPT-2)
    dropout: float = 0.1         # dropout on embeddings and on each sub-layer's output
    attn_dropout: float = 0.1    # dropout on the attention weights
    eps: float = 1e-5            # layer-norm epsilon (GPT-2's value)
    approximate: str = "tanh"    # GELU: 'tanh' approximation (GPT-2's gelu_new) or 'none' (erf)
    tie_weights: bool = True     # the LM head reuses the token embedding matrix (no extra weights)

    @classmethod
    def from_hf(cls, hf: Any) -> GPTConfig:
        """The same sizes as a transformers GPT2Config."""
        if hf.activation_function not in _HF_ACTIVATIONS:
            raise ValueError(f"Unsupported activation {hf.activation_function!r}; "
                             f"supported: {sorted(_HF_ACTIVATIONS)}.")
        if not hf.scale_attn_weights or hf.scale_attn_by_inverse_layer_idx:
            raise ValueError("Only GPT-2's standard 1/sqrt(d_head) attention scaling is supported.")
        return cls(
            vocab_size=hf.vocab_size, block_size=hf.n_positions, d_model=hf.n_embd,
            n_layers=hf.n_layer, n_heads=hf.n_head, d_ff=hf.n_inner or 4 * hf.n_embd,
            dropout=hf.resid_pdrop, attn_dropout=hf.attn_pdrop, eps=hf.layer_norm_epsilon,
            approximate=_HF_ACTIVATIONS[hf.activation_function],
            tie_weights=getattr(hf, "tie_word_embeddings", True),
        )

    def to_hf(self) -> Any:
        """The equivalent transformers GPT2Config."""
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=self.vocab_size, n_positions=self.block_size, n_embd=self.d_model,
            n_layer=self.n_layers, n_head=self.n_heads, n_inner=self.d_ff,
            resid_pdrop=self.dropout, embd_pdrop=self.dropout, attn_pdrop=self.attn_dropout,
            layer_norm_epsilon=self.eps, tie_word_embeddings=self.tie_weights,
            activation_function="gelu_new" if self.approximate == "tanh" else "gelu",
            # GPT-2's <|endoftext|> id, 50256, only exists in a vocabulary that large
            bos_token_id=50256 if self.vocab_size > 50256 else None,
            eos_token_id=50256 if self.vocab_size > 50256 else None,
        )


class GPT(CheckpointingMixin, nn.Module):
    """A GPT decoder: token + position embeddings, n_layers pre-LN causal blocks, a final LN and
    a language-model head tied to the token embeddings."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout,
                         cfg.eps, cfg.approximate)
            for _ in range(cfg.n_layers)
        )
        self.ln_f = LayerNorm(cfg.d_model, cfg.eps)  # pre-LN leaves the last residual sum raw
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one (V, D) matrix, used twice

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: KVCache | None = None) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states after ln_f (B, T, D).

        With a `cache` holding T_past earlier tokens, input_ids are the tokens that follow them:
        positions T_past..T_past + T - 1, and attention_mask (if any) covers all T_past + T.
        """
        T = input_ids.shape[1]
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.block_size:
            if past:
                raise ValueError(f"{past} cached and {T} new tokens are more than block_size="
                                 f"{self.cfg.block_size} positions: start a new cache from the last "
                                 f"{self.cfg.block_size} tokens (lm.pretraining.generate does).")
            raise ValueError(f"Sequence of {T} tokens is longer than block_size={self.cfg.block_size}.")
        pos = torch.arange(past, past + T, device=input_ids.device)  # (T,) after the cached tokens
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(pos))  # (B, T, D)
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, T_past + T)
        if cache is None:
            x = run_blocks(self.blocks, x, mask, self.gradient_checkpointing)  # (B, T, D)
        else:  # generation: no backward pass, so nothing to checkpoint
            for i, block in enumerate(self.blocks):
                x = block(x, mask, cache=cache, layer=i)  # (B, T, D)
        return self.ln_f(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, use_cache: bool = False,
                ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """input_ids (B, T) -> next-token logits (B, T, vocab_size).

        use_cache=True returns (logits, cache): the cache holds every layer's keys and values of
        the tokens seen so far (a new KVCache unless one is passed). Pass it back with the next
        tokens only, `model(new_ids, cache=cache, use_cache=True)`: the model then computes keys
        and values for the new tokens alone. The cache is extended in place.
        """
        if use_cache and cache is None:
            cache = KVCache()
        logits = self.lm_head(self.hidden_states(input_ids, attention_mask, cache))
        return (logits, cache) if use_cache else logits


# --------------------------------------------------------------------------- loading transformers weights
#
# A weight map lists (our name, transformers' name) pairs. GPT-2 stores its linear layers as
# Conv1D, whose weight is (in, out): the transpose of nn.Linear's (out, in); and it fuses the
# query, key and value projections into one c_attn of shape (D, 3D).


def _bert_pairs(cfg: BertConfig) -> list[tuple[str, str]]:
    pairs = [("embeddings.word.weight", "embeddings.word_embeddings.weight"),
             ("embeddings.position.weight", "embeddings.position_embeddings.weight"),
             ("embeddings.token_type.weight", "embeddings.token_type_embeddings.weight"),
             ("embeddings.ln.weight", "embeddings.LayerNorm.weight"),
             ("embeddings.ln.bias", "embeddings.LayerNorm.bias")]
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in [("attn.q_proj", "attention.self.query"), ("attn.k_proj", "attention.self.key"),
                     ("attn.v_proj", "attention.self.value"),
                     ("attn.out_proj", "attention.output.dense"),
                     ("ln1", "attention.output.LayerNorm"), ("ffn.fc1", "intermediate.dense"),
                     ("ffn.fc2", "output.dense"), ("ln2", "output.LayerNorm")]:
            pairs += [(ours + a + ".weight", theirs + b + ".weight"),
                      (ours + a + ".bias", theirs + b + ".bias")]
    if cfg.pooler:
        pairs += [("pooler.weight", "pooler.dense.weight"), ("pooler.bias", "pooler.dense.bias")]
    return pairs


def _bert_base(hf_model: nn.Module) -> nn.Module:
    """The BertModel inside a BertModel, BertForMaskedLM, BertForTokenClassification, ..."""
    base = getattr(hf_model, "bert", hf_model)
    if not hasattr(base, "embeddings") or not hasattr(base, "encoder"):
        raise TypeError(f"Expected a transformers BertModel (or a model holding one as .bert), "
                        f"got {type(hf_model).__name__}.")
    return base


def bert_from_hf(hf_model: nn.Module) -> Bert:
    """The course's Bert with the weights of a transformers BertModel (or a model holding one)."""
    base = _bert_base(hf_model)
    cfg = BertConfig.from_hf(base.config)
    cfg.pooler = getattr(base, "pooler", None) is not None
    model = Bert(cfg)
    sd = base.state_dict()
    model.load_state_dict({ours: sd[theirs] for ours, theirs in _bert_pairs(cfg)}, strict=True)
    param = next(base.parameters())
    return model.to(device=param.device, dtype=param.dtype).train(base.training)


def bert_to_hf(model: Bert) -> nn.Module:
    """A transformers BertModel with the weights of the course's Bert (save it with save_pretrained)."""
    from transformers import BertModel

    hf = BertModel(model.cfg.to_hf(), add_pooling_layer=model.cfg.pooler)
    sd = model.state_dict()
    missing, unexpected = hf.load_state_dict(
        {theirs: sd[ours] for ours, theirs in _bert_pairs(model.cfg)}, strict=False)
    if unexpected or [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]:
        raise RuntimeError(f"Weight map incomplete: missing {missing}, unexpected {unexpected}.")
    param = next(model.parameters())
    return hf.to(device=param.device, dtype=param.dtype).train(model.training)


def _gpt_layer_map(i: int) -> list[tuple[str, str, bool]]:
    """(ours, theirs, transposed) for block i, except the fused c_attn."""
    ours, theirs = f"blocks.{i}.", f"h.{i}."
    out = []
    for a, b, conv in [("ln1", "ln_1", False), ("attn.out_proj", "attn.c_proj", True),
                       ("ln2", "ln_2", False), ("ffn.fc1", "mlp.c_fc", True),
                       ("ffn.fc2", "mlp.c_proj", True)]:
        out += [(ours + a + ".weight", theirs + b + ".weight", conv),
                (ours + a + ".bias", theirs + b + ".bias", False)]
    return out


def gpt_from_hf(hf_model: nn.Module) -> GPT:
    """The course's GPT with the weights of a transformers GPT2LMHeadModel or GPT2Model."""
    base = getattr(hf_model, "transformer", hf_model)
    if not hasattr(base, "wte") or not hasattr(base, "h"):
        raise TypeError(f"Expected a transformers GPT2Model or GPT2LMHeadModel, got {type(hf_model).__name__}.")
    cfg = GPTConfig.from_hf(base.config)
    sd = base.state_dict()
    new: dict[str, torch.Tensor] = {
        "tok_emb.weight": sd["wte.weight"], "pos_emb.weight": sd["wpe.weight"],
        "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"],
    }
    D = cfg.d_model
    for i in range(cfg.n_layers):
        for ours, theirs, conv in _gpt_layer_map(i):
            new[ours] = sd[theirs].t() if conv else sd[theirs]
        w, b = sd[f"h.{i}.attn.c_attn.weight"], sd[f"h.{i}.attn.c_attn.bias"]  # (D, 3D), (3D,)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            new[f"blocks.{i}.attn.{name}.weight"] = w[:, j * D:(j + 1) * D].t()  # (D_out, D_in)
            new[f"blocks.{i}.attn.{name}.bias"] = b[j * D:(j + 1) * D]
    head = getattr(hf_model, "lm_head", None)
    new["lm_head.weight"] = head.weight if head is not None else sd["wte.weight"]
    if cfg.tie_weights and head is not None and head.weight.data_ptr() != sd["wte.weight"].data_ptr():
        raise ValueError("The model says tie_word_embeddings=True but its lm_head is a separate matrix.")
    model = GPT(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=True)
    param = next(base.parameters())
    return model.to(device=param.device, dtype=param.dtype).train(base.training)


def gpt_to_hf(model: GPT) -> nn.Module:
    """A transformers GPT2LMHeadModel with the weights of the course's GPT."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(model.cfg.to_hf())
    sd = model.state_dict()
    new = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(model.cfg.n_layers):
        for ours, theirs, conv in _gpt_layer_map(i):
            new["transformer." + theirs] = sd[ours].t() if conv else sd[ours]
        a = f"blocks.{i}.attn."
        new[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
            [sd[a + n + ".weight"] for n in ("q_proj", "k_proj", "v_proj")], dim=0).t()  # (D, 3D)
        new[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(
            [sd[a + n + ".bias"] for n in ("q_proj", "k_proj", "v_proj")])  # (3D,)
    hf.load_state_dict({k: v.contiguous() for k, v in new.items()}, strict=True)
    param = next(model.parameters())
    return hf.to(device=param.device, dtype=param.dtype).train(model.training)


# --------------------------------------------------------------------------- counting


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters of a model (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared one once


def layer_norm_param_count(d_model: int) -> int:
    """A LayerNorm: a gain and a bias per feature."""
    return 2 * d_model


def attention_param_count(d_model: int) -> int:
    """Multi-head attention: four D x D projections (q, k, v, out) with biases; heads add nothing."""
    return 4 * d_model * d_model + 4 * d_model


def feed_forward_param_count(d_model: int, d_ff: int) -> int:
    """The feed-forward network: D x d_ff and d_ff x D with biases."""
    return 2 * d_model * d_ff + d_ff + d_model


def block_param_count(d_model: int, d_ff: int) -> int:
    """One transformer block, pre-LN or post-LN alike: attention, feed-forward, two LayerNorms."""
    return (attention_param_count(d_model) + feed_forward_param_count(d_model, d_ff)
            + 2 * layer_norm_param_count(d_model))


def bert_param_count(cfg: BertConfig) -> int:
    """Parameters of `Bert(cfg)` by formula (equals transformers' BertModel with the same config)."""
    D = cfg.d_model
    embeddings = (cfg.vocab_size + cfg.max_positions + cfg.type_vocab_size) * D + layer_norm_param_count(D)
    pooler = D * D + D if cfg.pooler else 0
    return embeddings + cfg.n_layers * block_param_count(D, cfg.d_ff) + pooler


def gpt_param_count(cfg: GPTConfig) -> int:
    """Parameters of `GPT(cfg)` by formula (a tied LM head adds nothing; equals GPT2LMHeadModel)."""
    D = cfg.d_model
    embeddings = (cfg.vocab_size + cfg.block_size) * D
    head = 0 if cfg.tie_weights else cfg.vocab_size * D  # no bias
    return (embeddings + cfg.n_layers * block_param_count(D, cfg.d_ff)
            + layer_norm_param_count(D) + head)


def gpt_matmul_param_count(cfg: GPTConfig) -> int:
    """Weights that take part in a matrix multiply per token: every block's, and the LM head.

    The embedding tables are looked up, not multiplied (no FLOPs); the tied head is multiplied.
    Biases and LayerNorms are left out: they cost O(D) per token, not O(D^2).
    """
    D = cfg.d_model
    return cfg.n_layers * (4 * D * D + 2 * D * cfg.d_ff) + cfg.vocab_size * D


def gpt_train_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> int:
    """FLOPs to train on one token (forward + backward) of a GPT: 6 N + 12 L T D.

    A weight takes part in one multiply-add per token in the forward pass (2 FLOPs), and the
    backward pass costs twice the forward (gradients for inputs and for weights): 6 per weight.
    The attention scores q k^T and the weighted sum of v add 2 * 2 * T * D per layer in the
    forward (T the context length; we ignore that the causal mask could skip half of them).
    N here is `gpt_matmul_param_count(cfg)`.
    """
    T = cfg.block_size if seq_len is None else seq_len
    return 6 * gpt_matmul_param_count(cfg) + 3 * cfg.n_layers * 2 * (2 * T * cfg.d_model)


def matmul_flops(n: int, m: int | None = None, k: int | None = None) -> int:
    """FLOPs of an (n x k) @ (k x m) matrix product: one multiply and one add per term."""
    m = n if m is None else m
    k = n if k is None else k
    return 2 * n * m * k


def measure_matmul_flops(n: int = 1024, repeats: int = 5, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> float:
    """Achieved FLOP/s of an n x n matrix product on `device` (best of `repeats` runs)."""
    import time

    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up: first calls pay for allocation and kernel selection
    sync()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return matmul_flops(n) / best
