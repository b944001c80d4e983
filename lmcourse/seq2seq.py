"""Lesson 05c, the encoder-decoder: cross-attention, a BART-style encoder-decoder transformer
assembled from the course's blocks (and proven equal to `transformers`' BartForConditionalGeneration
by copying weights both ways), teacher forcing (decoder inputs shifted right), greedy and beam-search
decoding, exact match, and the data: a date-normalisation task the project generates ("3rd of March
1998" -> "1998-03-03"), or a small real translation corpus through `datasets` when online.

Encoder blocks are `lmcourse.transformer.EncoderBlock` unchanged (BART's encoder is post-LN, as
BERT's); the decoder block adds a cross-attention sub-layer between the causal self-attention and
the feed-forward network. The training loop is `lmcourse.train.Trainer`.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from lmcourse import config
from lmcourse.attention import (
    MultiHeadAttention,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
)
from lmcourse.batching import pad_rows
from lmcourse.lm_math import IGNORE_INDEX
from lmcourse.transformer import _HF_ACTIVATIONS, EncoderBlock, FeedForward, LayerNorm

if TYPE_CHECKING:
    from lmcourse.train import History, TrainConfig

POSITION_OFFSET = 2  # BART's learned positions: row p + 2 holds position p (a fairseq legacy)


# --------------------------------------------------------------------------- cross-attention


class CrossAttention(MultiHeadAttention):
    """Multi-head cross-attention: queries from the decoder, keys and values from the encoder's
    output (the "memory"); the same four projections as self-attention."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D) decoder states, memory (B, S, D) encoder output -> (B, T, D).

        mask: bool, True = may attend, broadcastable to (B, H, T, S): the encoder's padding mask
        `padding_mask(attention_mask)` (B, 1, 1, S). Never causal: every output position may read
        the whole source. With `return_weights`, also the weights (B, H, T, S).
        """
        q = split_heads(self.q_proj(x), self.n_heads)       # (B, H, T, d_head)
        k = split_heads(self.k_proj(memory), self.n_heads)  # (B, H, S, d_head)
        v = split_heads(self.v_proj(memory), self.n_heads)  # (B, H, S, d_head)
        out, weights = scaled_dot_product_attention(
            q, k, v, mask=mask, return_weights=True,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, d_head), (B, H, T, S)
        out = self.out_proj(merge_heads(out))  # (B, T, D)
        return (out, weights) if return_weights else out


def cross_attention(
    x: torch.Tensor, memory: torch.Tensor, attention_mask: torch.Tensor | None, attn: CrossAttention,
) -> torch.Tensor:
    """Cross-attention of decoder states `x` (B, T, D) over encoder output `memory` (B, S, D) with
    the projections of `attn`; `attention_mask` (B, S) is the encoder's 0/1 mask (1 = real token)."""
    mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, S)
    return attn(x, memory, mask=mask)


class Seq2SeqDecoderBlock(nn.Module):
    """Post-LN decoder block of an encoder-decoder (BART): causal self-attention, cross-attention
    over the encoder's output, feed-forward; each sub-layer followed by its residual sum and a LN."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, eps: float = 1e-5, approximate: str = "none"):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout=attn_dropout)
        self.ln1 = LayerNorm(d_model, eps)  # after the self-attention's residual sum
        self.cross_attn = CrossAttention(d_model, n_heads, dropout=attn_dropout)
        self.ln2 = LayerNorm(d_model, eps)  # after the cross-attention's residual sum
        self.ffn = FeedForward(d_model, d_ff, approximate, dropout)
        self.ln3 = LayerNorm(d_model, eps)  # after the feed-forward's residual sum
        self.dropout = nn.Dropout(dropout)  # on each attention's output, before the residual

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), memory (B, S, D) -> (B, T, D); with `return_weights`, also the
        cross-attention weights (B, H, T, S).

        memory_mask: the encoder's padding mask (B, 1, 1, S), True = may attend. self_mask: an
        optional mask of the decoder's own tokens, combined with the causal mask.
        """
        x = self.ln1(x + self.dropout(self.self_attn(x, mask=self_mask, is_causal=True)))
        h, weights = self.cross_attn(x, memory, mask=memory_mask, return_weights=True)
        x = self.ln2(x + self.dropout(h))
        x = self.ln3(x + self.ffn(x))
        return (x, weights) if return_weights else x


# --------------------------------------------------------------------------- config


@dataclass
class Seq2SeqConfig:
    """Sizes and special ids of a BART-style encoder-decoder (defaults: a small model; BART-base is
    d_model=768, n_layers=6, n_heads=12, d_ff=3072, max_positions=1024, vocab_size=50265)."""

    vocab_size: int = 64           # shared by the encoder, the decoder and the output layer
    d_model: int = 128             # width of the residual stream
    n_layers: int = 2              # encoder blocks (and decoder blocks unless n_decoder_layers)
    n_decoder_layers: int | None = None  # decoder blocks; None: n_layers
    n_heads: int = 4               # attention heads in every attention; d_model must divide by it
    d_ff: int = 512                # inner width of every feed-forward network
    max_positions: int = 64        # longest source or target (rows of each position table - 2)
    dropout: float = 0.1           # on embeddings and on each sub-layer's output
    attn_dropout: float = 0.0      # on the attention weights (BART's attention_dropout)
    eps: float = 1e-5              # layer-norm epsilon (nn.LayerNorm's default, BART's)
    approximate: str = "none"      # GELU: 'none' = exact erf form (BART's "gelu"), 'tanh'
    scale_embedding: bool = False  # multiply token embeddings by sqrt(d_model) (BART: False)
    bos_token_id: int = 0          # <s>
    pad_token_id: int = 1          # <pad>: its embedding row starts at 0 and gets no gradient
    eos_token_id: int = 2          # </s>: ends every source and every target
    decoder_start_token_id: int = 2  # the decoder's first input; BART starts with </s>
    init_std: float = 0.02         # initial weights ~ N(0, init_std^2) (BART's init_std)

    @property
    def decoder_layers(self) -> int:
        """Number of decoder blocks."""
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    @classmethod
    def from_hf(cls, hf: Any) -> Seq2SeqConfig:
        """The same sizes as a transformers BartConfig.

        BART's `activation_dropout` (inside the feed-forward) and layer drop act only in training;
        the course's blocks have neither, so a converted model equals BART in eval mode.
        """
        if hf.encoder_attention_heads != hf.decoder_attention_heads or hf.encoder_ffn_dim != hf.decoder_ffn_dim:
            raise ValueError("The course's encoder and decoder share n_heads and d_ff; this BartConfig "
                             f"has heads {hf.encoder_attention_heads}/{hf.decoder_attention_heads} and "
                             f"ffn {hf.encoder_ffn_dim}/{hf.decoder_ffn_dim}: make them equal.")
        if hf.activation_function not in _HF_ACTIVATIONS:
            raise ValueError(f"Unsupported activation {hf.activation_function!r}; "
                             f"supported: {sorted(_HF_ACTIVATIONS)}.")
        if not getattr(hf, "tie_word_embeddings", True):
            raise ValueError("The course's encoder-decoder ties its output layer to the shared "
                             "embedding (as BART does): use tie_word_embeddings=True.")
        return cls(
            vocab_size=hf.vocab_size, d_model=hf.d_model, n_layers=hf.encoder_layers,
            n_decoder_layers=None if hf.decoder_layers == hf.encoder_layers else hf.decoder_layers,
            n_heads=hf.encoder_attention_heads, d_ff=hf.encoder_ffn_dim,
            max_positions=hf.max_position_embeddings, dropout=hf.dropout,
            attn_dropout=hf.attention_dropout, approximate=_HF_ACTIVATIONS[hf.activation_function],
            scale_embedding=bool(hf.scale_embedding), bos_token_id=hf.bos_token_id,
            pad_token_id=hf.pad_token_id, eos_token_id=hf.eos_token_id,
            decoder_start_token_id=hf.decoder_start_token_id, init_std=hf.init_std,
        )

    def to_hf(self) -> Any:
        """The equivalent transformers BartConfig."""
        from transformers import BartConfig

        if self.eps != 1e-5:
            raise ValueError(f"BART's LayerNorms use eps=1e-5 (nn.LayerNorm's default); this config "
                             f"has eps={self.eps}.")
        return BartConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, encoder_layers=self.n_layers,
            decoder_layers=self.decoder_layers, encoder_attention_heads=self.n_heads,
            decoder_attention_heads=self.n_heads, encoder_ffn_dim=self.d_ff, decoder_ffn_dim=self.d_ff,
            max_position_embeddings=self.max_positions, dropout=self.dropout,
            attention_dropout=self.attn_dropout, activation_dropout=0.0,
            activation_function="gelu" if self.approximate == "none" else "gelu_new",
            scale_embedding=self.scale_embedding, bos_token_id=self.bos_token_id,
            pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.decoder_start_token_id,
            forced_eos_token_id=self.eos_token_id, tie_word_embeddings=True, init_std=self.init_std,
        )


# --------------------------------------------------------------------------- the model


@dataclass
class Seq2SeqOutput:
    """What the encoder-decoder returns: logits, the loss when labels were given, and (when asked)
    the cross-attention weights of every decoder block."""

    logits: torch.Tensor                       # (B, T, V)
    loss: torch.Tensor | None = None           # mean cross-entropy per labelled target token
    cross_attentions: list[torch.Tensor] | None = None  # per decoder block, (B, H, T, S)


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: `start_id`, then the labels without their last token,
    with IGNORE_INDEX (-100) replaced by `pad_id`. labels (B, T) -> (B, T)."""
    inputs = labels.new_full(labels.shape, start_id)  # (B, T)
    inputs[:, 1:] = labels[:, :-1]  # position t reads target t-1 and must predict target t
    return inputs.masked_fill(inputs == IGNORE_INDEX, pad_id)  # -100 is a label, never an input id


class _Stack(nn.Module):
    """BART's input layer for one side (learned positions, offset 2; a LayerNorm) and its blocks."""

    def __init__(self, cfg: Seq2SeqConfig, blocks: list[nn.Module]):
        super().__init__()
        self.pos_emb = nn.Embedding(cfg.max_positions + POSITION_OFFSET, cfg.d_model)
        self.ln_emb = LayerNorm(cfg.d_model, cfg.eps)  # BART's layernorm_embedding
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(blocks)
        self.max_positions = cfg.max_positions

    def embed(self, tok: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, D) -> plus positions, normalised (B, T, D)."""
        T = tok.shape[1]
        if T > self.max_positions:
            raise ValueError(f"Sequence of {T} tokens is longer than max_positions="
                             f"{self.max_positions}; build the model with a larger max_positions.")
        pos = torch.arange(T, device=tok.device) + POSITION_OFFSET  # (T,)
        return self.dropout(self.ln_emb(tok + self.pos_emb(pos)))


@torch.no_grad()
def init_bart_weights(model: nn.Module, std: float = 0.02) -> nn.Module:
    """BART's initialisation, in place: every linear and embedding weight from N(0, std^2), biases
    0, LayerNorms gain 1 and bias 0, the padding row of a token embedding 0.

    With PyTorch's defaults the embeddings are N(0, 1) and, tied to the output layer, give first
    logits of size about sqrt(d_model): a first loss far above ln(vocab_size). Draws from torch's
    global generator (seed it first).
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, LayerNorm):
            module.weight.fill_(1.0)
            if module.bias is not None:
                module.bias.zero_()
    for module in model.modules():  # last: a tied output layer shares the embedding's matrix
        if isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
    return model


class Seq2Seq(nn.Module):
    """A BART-style encoder-decoder: one shared token embedding; an encoder of post-LN blocks
    (`EncoderBlock`); a decoder of post-LN blocks with cross-attention; an output layer tied to the
    shared embedding, plus BART's `final_logits_bias`."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, D, padding_idx=cfg.pad_token_id)
        self.embed_scale = math.sqrt(D) if cfg.scale_embedding else 1.0
        self.encoder = _Stack(cfg, [
            EncoderBlock(D, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout, cfg.eps, cfg.approximate)
            for _ in range(cfg.n_layers)])
        self.decoder = _Stack(cfg, [
            Seq2SeqDecoderBlock(D, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout, cfg.eps,
                                cfg.approximate)
            for _ in range(cfg.decoder_layers)])
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # one (V, D) matrix: input of both sides, and output
        # a bias on the logits that BART keeps as a buffer (not trained; zeros unless loaded)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size))
        init_bart_weights(self, cfg.init_std)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids (B, S) and their 0/1 mask -> the encoder's output, the memory (B, S, D)."""
        x = self.encoder.embed(self.tok_emb(input_ids) * self.embed_scale)  # (B, S, D)
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, S)
        for block in self.encoder.blocks:
            x = block(x, mask)
        return x

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        return_cross_attentions: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoder ids (B, T), memory (B, S, D) and the encoder's 0/1 mask (B, S) -> logits
        (B, T, V); with `return_cross_attentions`, also each block's cross weights (B, H, T, S)."""
        x = self.decoder.embed(self.tok_emb(decoder_input_ids) * self.embed_scale)  # (B, T, D)
        memory_mask = padding_mask(attention_mask) if attention_mask is not None else None
        self_mask = padding_mask(decoder_attention_mask) if decoder_attention_mask is not None else None
        weights = []
        for block in self.decoder.blocks:
            x, w = block(x, memory, memory_mask, self_mask, return_weights=True)
            weights.append(w)
        logits = self.lm_head(x) + self.final_logits_bias  # (B, T, V)
        return (logits, weights) if return_cross_attentions else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        return_cross_attentions: bool = False,
    ) -> Seq2SeqOutput:
        """Encode the source, decode with teacher forcing; the loss when `labels` (B, T) are given.

        Without `decoder_input_ids` they are `shift_right(labels)`, as BART makes them.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("Pass labels (the decoder inputs are made from them by shift_right) "
                                 "or decoder_input_ids.")
            decoder_input_ids = shift_right(labels, self.cfg.decoder_start_token_id, self.cfg.pad_token_id)
        memory = self.encode(input_ids, attention_mask)
        logits, weights = self.decode(decoder_input_ids, memory, attention_mask, decoder_attention_mask,
                                      return_cross_attentions=True)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),  # (B*T, V), (B*T,)
                                   ignore_index=IGNORE_INDEX)
        return Seq2SeqOutput(logits, loss, weights if return_cross_attentions else None)


# --------------------------------------------------------------------------- transformers' BART
#
# Our names -> BartForConditionalGeneration's. Both store nn.Linear weights (out, in) and separate
# q, k, v projections, so the map is a renaming; the shared embedding appears in BART under four
# names (shared, encoder.embed_tokens, decoder.embed_tokens, lm_head), all one tensor.

_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")


def _seq2seq_pairs(cfg: Seq2SeqConfig) -> list[tuple[str, str]]:
    pairs = [("tok_emb.weight", "model.shared.weight")]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.pos_emb.weight", f"model.{side}.embed_positions.weight"),
                  (f"{side}.ln_emb.weight", f"model.{side}.layernorm_embedding.weight"),
                  (f"{side}.ln_emb.bias", f"model.{side}.layernorm_embedding.bias")]
    enc = [(f"attn.{p}", f"self_attn.{p}") for p in _ATTN] + [
        ("ln1", "self_attn_layer_norm"), ("ffn.fc1", "fc1"), ("ffn.fc2", "fc2"), ("ln2", "final_layer_norm")]
    dec = [(f"self_attn.{p}", f"self_attn.{p}") for p in _ATTN] + [("ln1", "self_attn_layer_norm")] + [
        (f"cross_attn.{p}", f"encoder_attn.{p}") for p in _ATTN] + [
        ("ln2", "encoder_attn_layer_norm"), ("ffn.fc1", "fc1"), ("ffn.fc2", "fc2"), ("ln3", "final_layer_norm")]
    for side, n, names in (("encoder", cfg.n_layers, enc), ("decoder", cfg.decoder_layers, dec)):
        for i in range(n):
            for ours, theirs in names:
                for w in ("weight", "bias"):
                    pairs.append((f"{side}.blocks.{i}.{ours}.{w}", f"model.{side}.layers.{i}.{theirs}.{w}"))
    return pairs


def seq2seq_from_hf(hf_model: nn.Module) -> Seq2Seq:
    """The course's Seq2Seq with the weights of a transformers BartForConditionalGeneration."""
    if not hasattr(hf_model, "model") or not hasattr(hf_model, "final_logits_bias"):
        raise TypeError(f"Expected a transformers BartForConditionalGeneration, got "
                        f"{type(hf_model).__name__} (a BartModel has no output layer: wrap it or "
                        "load BartForConditionalGeneration).")
    cfg = Seq2SeqConfig.from_hf(hf_model.config)
    sd = hf_model.state_dict()
    if sd["lm_head.weight"].data_ptr() != sd["model.shared.weight"].data_ptr() and not torch.equal(
            sd["lm_head.weight"], sd["model.shared.weight"]):
        raise ValueError("This BART's lm_head is not its shared embedding; the course's model ties them.")
    new = {ours: sd[theirs] for ours, theirs in _seq2seq_pairs(cfg)}
    new["lm_head.weight"] = sd["model.shared.weight"]
    new["final_logits_bias"] = sd["final_logits_bias"]
    model = Seq2Seq(cfg)
    model.load_state_dict(new, strict=True)
    param = next(hf_model.parameters())
    return model.to(device=param.device, dtype=param.dtype).train(hf_model.training)


def seq2seq_to_hf(model: Seq2Seq) -> nn.Module:
    """A transformers BartForConditionalGeneration with the weights of the course's Seq2Seq
    (save it with save_pretrained)."""
    from transformers import BartForConditionalGeneration

    hf = BartForConditionalGeneration(model.cfg.to_hf())
    sd = model.state_dict()
    new = {theirs: sd[ours] for ours, theirs in _seq2seq_pairs(model.cfg)}
    new["final_logits_bias"] = sd["final_logits_bias"]
    missing, unexpected = hf.load_state_dict(new, strict=False)
    tied = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"Weight map incomplete: missing {sorted(set(missing) - tied)}, "
                           f"unexpected {unexpected}.")
    hf.tie_weights()
    param = next(model.parameters())
    return hf.to(device=param.device, dtype=param.dtype).train(model.training)


# --------------------------------------------------------------------------- characters as tokens

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # BART's first four ids: bos 0, pad 1, eos 2, unk 3


@dataclass
class CharTokenizer:
    """Characters as tokens, after BART's four special tokens (<s> 0, <pad> 1, </s> 2, <unk> 3)."""

    chars: list[str]  # the characters, in id order from 4

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> CharTokenizer:
        """A vocabulary of every character in `texts`, sorted."""
        return cls(sorted(set("".join(texts))))

    def __post_init__(self) -> None:
        self.itos = [*SPECIAL_TOKENS, *self.chars]
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    bos_id, pad_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        """Ids of the characters (unknown ones -> <unk>), then </s>."""
        ids = [self.stoi.get(c, self.unk_id) for c in text]
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text up to the first </s>; <s> and <pad> are left out, <unk> shown as '?'."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.eos_id:
                break
            if i in (self.bos_id, self.pad_id):
                continue
            out.append("?" if i == self.unk_id else self.itos[i])
        return "".join(out)

    def tokens(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Every id as its string (specials included): axis labels for attention maps."""
        return [self.itos[int(i)] for i in ids]


class Pair(NamedTuple):
    """One example of a sequence-to-sequence task."""

    source: str
    target: str
    kind: str = ""  # the date style, or the corpus it came from


class Seq2SeqDataset(Dataset):
    """(source, target) pairs encoded with a CharTokenizer: input_ids and labels, each ending in </s>."""

    def __init__(self, pairs: Sequence[Pair], tokenizer: CharTokenizer):
        self.pairs, self.tokenizer = list(pairs), tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        p = self.pairs[i]
        return {"input_ids": self.tokenizer.encode(p.source), "labels": self.tokenizer.encode(p.target)}


@dataclass
class Seq2SeqCollator:
    """A batch from encoded pairs: input_ids and attention_mask (B, S) padded with pad_id, and
    labels (B, T) padded with IGNORE_INDEX (sources and targets have their own lengths)."""

    pad_id: int

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        src = [list(e["input_ids"]) for e in examples]
        return {"input_ids": pad_rows(src, self.pad_id),                        # (B, S)
                "attention_mask": pad_rows([[1] * len(s) for s in src], 0),     # (B, S)
                "labels": pad_rows([list(e["labels"]) for e in examples], IGNORE_INDEX)}  # (B, T)


# --------------------------------------------------------------------------- the date task

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_YEAR, LAST_YEAR = 1970, 2059  # two-digit years: 70-99 -> 19xx, 00-59 -> 20xx
DATES_NOTE = ("generated by lmcourse (lm.seq2seq.date_splits): dates written in many styles, "
              "a synthetic task, not a real corpus")


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 3 -> '3rd', 11 -> '11th', 22 -> '22nd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# style name -> how a date is written in it (examples for 3 March 1998 on the right)
DATE_STYLES: dict[str, Callable[[dt.date], str]] = {
    "iso": lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}",                        # 1998-03-03
    "day/month/year": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",                 # 03/03/1998
    "day/month/yy": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}",         # 03/03/98
    "day.month.year": lambda d: f"{d.day}.{d.month}.{d.year}",                         # 3.3.1998
    "compact": lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}",                      # 19980303
    "Month day, year": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",           # March 3, 1998
    "day Month year": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",             # 3 March 1998
    "ordinal of Month": lambda d: f"{ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",  # 3rd of March 1998
    "Month ordinal": lambda d: f"{MONTHS[d.month - 1]} {ordinal(d.day)}, {d.year}",    # March 3rd, 1998
    "weekday": lambda d: f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year}",  # Tuesday, 3 March 1998
    "DD-MON-YYYY": lambda d: f"{d.day:02d}-{MONTHS[d.month - 1][:3].upper()}-{d.year}",  # 03-MAR-1998
    "mon d yy": lambda d: f"{MONTHS[d.month - 1][:3].lower()} {d.day} '{d.year % 100:02d}",  # mar 3 '98
}


# styles the training data never uses, made of characters it does use: a probe of generalisation
UNSEEN_DATE_STYLES: dict[str, Callable[[dt.date], str]] = {
    "year/month/day": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",                 # 1998/03/03
    "day Mon year": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",           # 3 Mar 1998
}


def write_date(d: dt.date, style: str) -> str:
    """`d` written in one of DATE_STYLES or UNSEEN_DATE_STYLES."""
    styles = {**DATE_STYLES, **UNSEEN_DATE_STYLES}
    if style not in styles:
        raise KeyError(f"Unknown date style {style!r}; choose one of {list(styles)}.")
    return styles[style](d)


def date_pair(d: dt.date, style: str) -> Pair:
    """(the date written in `style`, the date in ISO form, the style)."""
    return Pair(write_date(d, style), d.isoformat(), style)


def date_splits(
    n_train: int,
    n_validation: int,
    n_test: int,
    seed: int = config.DEFAULT_SEED,
    styles: Sequence[str] | None = None,
    first_year: int = FIRST_YEAR,
    last_year: int = LAST_YEAR,
) -> dict[str, list[Pair]]:
    """The date-normalisation task, generated: train, validation and test lists of Pairs.

    Every calendar day from 1 January `first_year` to 31 December `last_year` belongs to one split
    only (a seeded shuffle of the days): a validation or test date never appears in training, in
    any style, so the model cannot pass by remembering dates. Validation and test cycle through
    the styles (equal counts per style); training draws a style at random for each example, its
    dates without repeats while the training days last. The same seed gives the same lists.
    """
    styles = list(DATE_STYLES) if styles is None else list(styles)
    unknown = [s for s in styles if s not in DATE_STYLES]
    if unknown:
        raise KeyError(f"Unknown date style(s) {unknown}; choose from {list(DATE_STYLES)}.")
    if not FIRST_YEAR <= first_year <= last_year <= LAST_YEAR:
        raise ValueError(f"Years must lie in {FIRST_YEAR}..{LAST_YEAR}, where a two-digit year "
                         f"has one meaning; got {first_year}..{last_year}.")
    start = dt.date(first_year, 1, 1)
    days = [start + dt.timedelta(i) for i in range((dt.date(last_year, 12, 31) - start).days + 1)]
    if n_validation + n_test >= len(days):
        raise ValueError(f"Only {len(days)} days in {first_year}..{last_year}: ask for fewer "
                         f"validation and test examples than that ({n_validation} + {n_test}).")
    rng = random.Random(seed)
    rng.shuffle(days)
    test_days, val_days = days[:n_test], days[n_test:n_test + n_validation]
    train_days = days[n_test + n_validation:]
    train = []
    for i in range(n_train):
        if i % len(train_days) == 0:
            rng.shuffle(train_days)  # a new pass over the training days, in a new order
        train.append(date_pair(train_days[i % len(train_days)], rng.choice(styles)))
    return {
        "train": train,
        "validation": [date_pair(d, styles[i % len(styles)]) for i, d in enumerate(val_days)],
        "test": [date_pair(d, styles[i % len(styles)]) for i, d in enumerate(test_days)],
    }


# --------------------------------------------------------------------------- a real translation corpus

TRANSLATION_HUB_ID = "Helsinki-NLP/opus_books"  # sentences of public-domain books and translations
TRANSLATION_DIR = "translation"                 # $LMCOURSE_DATA_DIR/translation/{train,test}.tsv


@dataclass
class TaskData:
    """The pairs of a sequence-to-sequence task, and where they came from."""

    splits: dict[str, list[Pair]]
    source: str    # local | online | offline
    location: str  # file, Hub data set or generator
    about: str     # one line for learners

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        return f"TaskData({sizes}; {self.source}: {self.location})"


def read_pairs_tsv(path: str | Path, kind: str = "") -> list[Pair]:
    """Pairs from a file of `source<TAB>target` lines."""
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}, line {n}: expected source<TAB>target, got {len(parts)} fields.")
        pairs.append(Pair(parts[0].strip(), parts[1].strip(), kind))
    return pairs


def _short_pairs(rows: Sequence[Mapping[str, str]], src: str, tgt: str, max_chars: int) -> list[Pair]:
    return [Pair(r[src].strip(), r[tgt].strip(), f"{src}-{tgt}") for r in rows
            if 0 < len(r[src].strip()) <= max_chars and 0 < len(r[tgt].strip()) <= max_chars]


def load_translation_pairs(
    n_train: int,
    n_test: int,
    max_chars: int = 60,
    languages: tuple[str, str] = ("en", "fr"),
    seed: int = config.DEFAULT_SEED,
    sources: Sequence[str] = ("local", "online", "offline"),
    quiet: bool = False,
) -> TaskData:
    """Short sentence pairs of a real translation corpus, or the generated date task offline.

    1. local: `$LMCOURSE_DATA_DIR/translation/{train,test}.tsv` (source<TAB>target lines);
    2. online: the Hub's `Helsinki-NLP/opus_books` (config "en-fr" for languages ("en", "fr")) through
       `datasets`: pairs whose two sides have at most `max_chars` characters, shuffled with `seed`
       and cut into train and test; skipped when an offline variable is set;
    3. offline: the project's generated date task (`date_splits`), clearly not a translation corpus.
    Prints which source it used.
    """
    from lmcourse import data

    src, tgt = languages

    def local() -> tuple[dict[str, list[Pair]], str]:
        paths = {s: data.read_local(Path(TRANSLATION_DIR) / f"{s}.tsv") for s in ("train", "test")}
        return {s: read_pairs_tsv(p, f"{src}-{tgt}") for s, p in paths.items()}, str(paths["train"].parent)

    def online() -> tuple[dict[str, list[Pair]], str]:
        data.require_network()
        import datasets

        pair_name = "-".join(sorted(languages))
        try:
            ds = datasets.load_dataset(TRANSLATION_HUB_ID, pair_name, split="train",
                                       cache_dir=str(config.cache_dir() / "datasets"))
        except data._network_errors() as e:
            raise data.SourceUnavailable(f"online: {TRANSLATION_HUB_ID} failed ({type(e).__name__}: {e})") from e
        pairs = _short_pairs(ds["translation"], src, tgt, max_chars)
        random.Random(seed).shuffle(pairs)
        if len(pairs) < n_train + n_test:
            raise data.DataError(f"{TRANSLATION_HUB_ID} {pair_name} has {len(pairs)} pairs of at most "
                                 f"{max_chars} characters; ask for fewer or raise max_chars.")
        return ({"train": pairs[:n_train], "test": pairs[n_train:n_train + n_test]},
                f"Hugging Face Hub {TRANSLATION_HUB_ID} ({pair_name}, sides of at most {max_chars} characters)")

    def offline() -> tuple[dict[str, list[Pair]], str]:
        splits = date_splits(n_train, 0, n_test, seed=seed)
        return {"train": splits["train"], "test": splits["test"]}, DATES_NOTE

    source, splits, location, tried = data.first_source(
        f"a {src}-{tgt} translation corpus", Path(TRANSLATION_DIR) / "train.tsv", sources,
        {"local": local, "online": online, "offline": offline})
    about = (f"{src} -> {tgt} sentence pairs" if source != "offline" else
             "the generated date task (no translation corpus offline)")
    if not quiet:
        note = f" (not used: {'; '.join(tried)})" if tried else ""
        print(f"translation pairs from {source} source: {location}; "
              f"{len(splits['train']):,} train, {len(splits['test']):,} test{note}")
        if source == "offline":
            print("  note: offline, this is the project's generated date task, not a translation corpus.")
    return TaskData(splits, source, location, about)


# --------------------------------------------------------------------------- decoding


def _memory(model: Seq2Seq, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if model.training:
        raise RuntimeError("Decoding runs in eval mode (dropout off): call model.eval() first.")
    return model.encode(input_ids, attention_mask)


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
) -> torch.Tensor:
    """The argmax token at every step, from the decoder's start token until </s> or
    `max_new_tokens`. Returns the new ids (B, L), </s> included, <pad> after it; L stops growing
    once every row has ended. No key/value cache: every step runs the decoder on the whole prefix."""
    cfg = model.cfg
    memory = _memory(model, input_ids, attention_mask)  # (B, S, D), computed once
    B = input_ids.shape[0]
    ys = torch.full((B, 1), cfg.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        logits = model.decode(ys, memory, attention_mask)[:, -1]  # (B, V) the last position's
        nxt = logits.argmax(dim=-1).masked_fill(done, cfg.pad_token_id)  # (B,) ended rows get <pad>
        ys = torch.cat([ys, nxt[:, None]], dim=1)  # (B, t + 1)
        done |= nxt == cfg.eos_token_id
        if done.all():
            break
    return ys[:, 1:]  # without the start token


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 4,
    max_new_tokens: int = 32,
    length_penalty: float = 0.0,
    return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beam search: keep the `num_beams` most probable prefixes of each example at every step.

    Each step extends every live prefix by every token and keeps the best `num_beams` extensions
    that do not end; an extension that ends with </s> joins the finished hypotheses when it ranks
    among the best `num_beams` (transformers' rule, which makes num_beams=1 greedy decoding). A
    hypothesis scores its summed log-probability divided by length ** `length_penalty` (0: the
    plain sum). An example is done when it has `num_beams` finished hypotheses and its best live
    prefix, scored at its current length, is no better than the worst of them (transformers'
    default; exact for length_penalty 0, where adding tokens only lowers the sum). Prefixes still
    live after `max_new_tokens` compete as they are. Returns the best hypothesis of each example
    as new ids (B, L), </s> included, <pad> after; with `return_scores`, also their scores (B,).
    No key/value cache: every step runs the decoder on the whole prefix of every beam.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}.")
    cfg = model.cfg
    memory = _memory(model, input_ids, attention_mask)  # (B, S, D)
    B, K, dev = input_ids.shape[0], num_beams, input_ids.device
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, D): one copy per beam
    mask = attention_mask.repeat_interleave(K, dim=0) if attention_mask is not None else None  # (B*K, S)
    seqs = torch.full((B * K, 1), cfg.decoder_start_token_id, dtype=torch.long, device=dev)
    scores = torch.full((B, K), -math.inf, device=dev)
    scores[:, 0] = 0.0  # one live beam at the start: K copies of it would fill the beam with twins

    def norm(score: float, length: int) -> float:
        return score / length ** length_penalty

    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # best K, best first
    done = [False] * B
    for t in range(1, max_new_tokens + 1):  # t: tokens generated, </s> included
        logits = model.decode(seqs, memory, mask)[:, -1]  # (B*K, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)  # (B, K*V)
        top, idx = cand.topk(min(2 * K, K * V), dim=-1)  # (B, 2K): K survive even if K of them end
        top, idx = top.tolist(), idx.tolist()
        rows, tokens, next_scores = [], [], []  # per new beam: its parent row, new token, score
        for b in range(B):
            alive: list[tuple[float, int, int]] = []  # (score, beam, token)
            if not done[b]:
                for rank, (s, j) in enumerate(zip(top[b], idx[b])):
                    if s == -math.inf:
                        break
                    beam, tok = divmod(j, V)
                    if tok != cfg.eos_token_id:
                        alive.append((s, beam, tok))
                    elif rank < K:  # ends among the best K: a finished hypothesis
                        ids = seqs[b * K + beam, 1:].tolist() + [tok]
                        finished[b] = sorted(finished[b] + [(norm(s, t), ids)], key=lambda h: -h[0])[:K]
                    if len(alive) == K:
                        break
                best_alive = norm(alive[0][0], t) if alive else -math.inf
                if len(finished[b]) == K and finished[b][-1][0] >= best_alive:
                    done[b] = True  # no live prefix is expected to win any more
            if done[b] or not alive:
                done[b] = True
                alive = [(-math.inf, 0, cfg.pad_token_id)]
            alive += [(-math.inf, alive[0][1], cfg.pad_token_id)] * (K - len(alive))  # dead fillers
            for s, beam, tok in alive:
                rows.append(b * K + beam)
                tokens.append(tok)
                next_scores.append(s)
        seqs = torch.cat([seqs[torch.tensor(rows, device=dev)],
                          torch.tensor(tokens, device=dev)[:, None]], dim=1)  # (B*K, t + 1)
        scores = torch.tensor(next_scores, device=dev).view(B, K)
        if all(done):
            break
    best: list[tuple[float, list[int]]] = []
    for b in range(B):
        hyps = list(finished[b])
        if not done[b]:  # live prefixes at the length limit compete as they are
            L = seqs.shape[1] - 1
            hyps += [(norm(float(scores[b, k]), L), seqs[b * K + k, 1:].tolist())
                     for k in range(K) if scores[b, k] > -math.inf]
        best.append(max(hyps, key=lambda h: h[0]) if hyps else (-math.inf, []))
    rows = [ids for _, ids in best]
    out = pad_rows(rows, cfg.pad_token_id) if any(rows) else torch.empty(B, 0, dtype=torch.long)
    out = out.to(dev)
    if return_scores:
        return out, torch.tensor([s for s, _ in best])
    return out


@torch.no_grad()
def sequence_log_probs(
    model: Seq2Seq,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    output_ids: torch.Tensor,
) -> torch.Tensor:
    """log P(output | source) under the model, summed over each output up to and including its
    </s> (tokens after it are ignored): (B,). Compares decoders on one scale."""
    cfg = model.cfg
    labels = output_ids.clone()  # (B, L)
    ended = (labels == cfg.eos_token_id).long().cumsum(dim=1)  # (B, L) 1 from the first </s> on
    after = (ended - (labels == cfg.eos_token_id).long()) > 0  # strictly after the first </s>
    labels = labels.masked_fill(after, IGNORE_INDEX)
    logits = model(input_ids, attention_mask, labels=labels).logits  # (B, L, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp_min(0)[..., None])[..., 0]  # (B, L)
    return picked.masked_fill(labels == IGNORE_INDEX, 0.0).sum(dim=1)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference, character for character."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not references:
        raise ValueError("exact_match of no examples is undefined.")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def translate(
    model: Seq2Seq,
    tokenizer: CharTokenizer,
    sources: Sequence[str],
    num_beams: int = 1,
    max_new_tokens: int = 32,
    batch_size: int = 256,
    return_log_probs: bool = False,
) -> list[str] | tuple[list[str], torch.Tensor]:
    """Decode `sources` (greedy for num_beams 1, else beam search) in batches on the model's
    device; returns texts, and with `return_log_probs` also each output's log-probability under
    the model (`sequence_log_probs`, (N,)), which compares decoders on one scale."""
    device = next(model.parameters()).device
    collate = Seq2SeqCollator(tokenizer.pad_id)
    model.eval()
    texts: list[str] = []
    log_probs: list[torch.Tensor] = []
    for i in range(0, len(sources), batch_size):
        batch = collate([{"input_ids": tokenizer.encode(s), "labels": []} for s in sources[i:i + batch_size]])
        ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if num_beams == 1:
            gen = greedy_decode(model, ids, am, max_new_tokens)
        else:
            gen = beam_search(model, ids, am, num_beams, max_new_tokens)
        texts += [tokenizer.decode(row) for row in gen.cpu()]
        if return_log_probs:
            with torch.no_grad():
                log_probs.append(sequence_log_probs(model, ids, am, gen).cpu())
    return (texts, torch.cat(log_probs)) if return_log_probs else texts


@dataclass
class ExactMatchCallback:
    """A Trainer callback: every `every` steps (and at the last), greedy exact match on `pairs`,
    kept in `history` as (step, exact match)."""

    tokenizer: CharTokenizer
    pairs: Sequence[Pair]
    every: int
    max_new_tokens: int = 32
    history: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, trainer: Any, record: dict[str, Any]) -> None:
        step = trainer.state.step
        if step % self.every and step != trainer.total_steps:
            return
        was_training = trainer.model.training
        preds = translate(trainer.model, self.tokenizer, [p.source for p in self.pairs],
                          max_new_tokens=self.max_new_tokens)
        trainer.model.train(was_training)
        self.history.append((step, exact_match(preds, [p.target for p in self.pairs])))


@torch.no_grad()
def cross_attention_maps(
    model: Seq2Seq, tokenizer: CharTokenizer, source: str, output: str,
) -> tuple[torch.Tensor, list[str], list[str]]:
    """The cross-attention weights while the model writes `output` for `source` (teacher forcing).

    Returns (weights (n_decoder_layers, n_heads, T, S), source tokens (S), output tokens (T)):
    row t is the decoder position that predicts output token t (its input is token t - 1).
    """
    device = next(model.parameters()).device
    src = torch.tensor([tokenizer.encode(source)], device=device)   # (1, S)
    labels = torch.tensor([tokenizer.encode(output)], device=device)  # (1, T)
    was_training = model.training
    out = model.eval()(src, labels=labels, return_cross_attentions=True)
    model.train(was_training)
    weights = torch.stack([w[0] for w in out.cross_attentions]).cpu()  # (L, H, T, S)
    return weights, tokenizer.tokens(src[0]), tokenizer.tokens(labels[0])


# --------------------------------------------------------------------------- a recipe


def train_seq2seq(
    splits: Mapping[str, Sequence[Pair]],
    model_cfg: Mapping[str, Any],
    train_cfg: TrainConfig,
    tokenizer: CharTokenizer | None = None,
    device: torch.device | str | None = None,
    seed: int = config.DEFAULT_SEED,
) -> tuple[Seq2Seq, CharTokenizer, History]:
    """The lesson's recipe in one call: a character tokenizer over every split's text, a Seq2Seq
    of `model_cfg` sizes (seeded), trained on splits["train"] with the course Trainer and
    `train_cfg` (a TrainConfig), evaluated on splits["validation"] if present.
    Returns (model in eval mode, tokenizer, the trainer's history)."""
    from lmcourse.train import Trainer

    if tokenizer is None:
        tokenizer = CharTokenizer.from_texts([t for ps in splits.values() for p in ps for t in p[:2]])
    longest = max(len(t) for ps in splits.values() for p in ps for t in p[:2]) + 1  # + </s>
    cfg = Seq2SeqConfig(vocab_size=len(tokenizer), max_positions=max(longest, 8), **model_cfg)
    config.seed_everything(seed)  # the initial weights
    model = Seq2Seq(cfg)
    val = splits.get("validation")
    trainer = Trainer(model, train_cfg, Seq2SeqDataset(splits["train"], tokenizer),
                      Seq2SeqDataset(val, tokenizer) if val else None,
                      collate_fn=Seq2SeqCollator(tokenizer.pad_id), device=device)
    history = trainer.train()
    return model.eval(), tokenizer, history
