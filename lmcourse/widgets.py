"""Interactive views for notebooks: the attention explorer (lessons 03 and 04).

An *attention function* maps a sentence to its tokens and the attention weights of every layer and
head, `(tokens, maps)` with maps of shape (n_layers, n_heads, T, T). The explorer and the plots take
any such function: a pretrained `transformers` encoder (`hf_attention_fn`; offline, the packaged
all-MiniLM-L6-v2), a small random model (`random_attention_fn`), or a lesson's own model.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from lmcourse import attention, config
from lmcourse.data import OFFLINE_BERT, packaged_bert_dir

AttentionFn = Callable[[str], tuple[list[str], torch.Tensor]]  # sentence -> tokens, (L, H, T, T)

ONLINE_BERT = "sentence-transformers/all-MiniLM-L6-v2"  # the same weights on the Hugging Face Hub


def load_explorer_model(device: torch.device | str | None = None) -> tuple[Any, Any, str] | None:
    """(model, tokenizer, source) for the attention explorer: a small pretrained BERT-architecture
    encoder that returns attention weights, all-MiniLM-L6-v2 (6 layers, uncased, distilled and fine-tuned for sentence
    embeddings, no masked-LM head; not a stand-in for bert-base-cased's masked-LM predictions).

    Tries the packaged offline copy, then the Hub when online; None when neither is available.
    The eager attention implementation is asked for because fused kernels return no weights.
    """
    import transformers

    folder = packaged_bert_dir()
    if folder is not None:
        name, source = str(folder), f"{OFFLINE_BERT} (packaged, offline)"
    elif not config.is_offline():
        name, source = ONLINE_BERT, f"{ONLINE_BERT} (Hugging Face Hub)"
    else:
        return None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
        model = transformers.AutoModel.from_pretrained(name, attn_implementation="eager")
    except OSError as e:  # no network or an incomplete download
        print(f"Could not load {name}: {e}")
        return None
    model = model.to(config.get_device(device)).eval()
    return model, tok, source


def hf_attention_fn(model: Any, tokenizer: Any, max_length: int = 64) -> AttentionFn:
    """An attention function for a `transformers` model (loaded with attn_implementation='eager')."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def fn(sentence: str) -> tuple[list[str], torch.Tensor]:
        enc = tokenizer(sentence, return_tensors="pt", truncation=True, max_length=max_length)
        out = model(**enc.to(device), output_attentions=True)
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("The model returned no attention weights; load it with "
                               "attn_implementation='eager'.")
        maps = torch.stack([a[0] for a in out.attentions]).float().cpu()  # (L, H, T, T)
        return tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist()), maps

    return fn


def random_attention_fn(d_model: int = 32, n_heads: int = 4, n_layers: int = 2,
                        seed: int = config.DEFAULT_SEED) -> AttentionFn:
    """An attention function of untrained MultiHeadAttention layers over whitespace tokens.

    Each word gets a fixed random embedding (seeded by the word), plus sinusoidal positions;
    layer l attends over x_l and feeds x_{l+1} = x_l + attention(x_l). The maps mean nothing:
    they stand in for a pretrained model's when none is available.
    """
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(n_layers):
        mha = attention.MultiHeadAttention(d_model, n_heads)
        with torch.no_grad():
            for p in mha.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / d_model**0.5)
        layers.append(mha.eval())

    @torch.no_grad()
    def fn(sentence: str) -> tuple[list[str], torch.Tensor]:
        tokens = sentence.split() or ["<empty>"]
        emb = torch.stack([torch.randn(d_model, generator=torch.Generator().manual_seed(
            zlib.crc32(w.lower().encode()))) for w in tokens])  # (T, D)
        x = (emb + attention.sinusoidal_positions(len(tokens), d_model))[None]  # (1, T, D)
        maps = []
        for mha in layers:
            out, w = mha(x, return_weights=True)  # (1, T, D), (1, H, T, T)
            x = x + out
            maps.append(w[0])
        return tokens, torch.stack(maps)  # (L, H, T, T)

    return fn


def plot_attention(weights: torch.Tensor, tokens_q: Sequence[str],
                   tokens_k: Sequence[str] | None = None, ax: Any = None,
                   title: str = "", annotate: bool | None = None) -> Figure:
    """Heatmap of one (T_q, T_k) attention matrix: rows are queries, columns are keys."""
    tokens_k = tokens_q if tokens_k is None else tokens_k
    w = weights.detach().float().cpu()
    if tuple(w.shape) != (len(tokens_q), len(tokens_k)):
        raise ValueError(f"weights have shape {tuple(w.shape)} but there are {len(tokens_q)} "
                         f"query and {len(tokens_k)} key tokens.")
    if ax is None:
        side = min(9.0, 1.5 + 0.38 * max(len(tokens_q), len(tokens_k)))
        fig, ax = plt.subplots(figsize=(side + 1.0, side))
    fig = ax.figure
    im = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-9))
    ax.set_xticks(range(len(tokens_k)), tokens_k, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens_q)), tokens_q, fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title, fontsize=9)
    if annotate is None:
        annotate = max(w.shape) <= 8  # numbers stay readable on small maps only
    if annotate:
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if w[i, j] < 0.6 * w.max() else "k")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def plot_heads(maps: torch.Tensor, tokens: Sequence[str], layer: int = 0,
               heads: Sequence[int] | None = None, ncols: int = 4) -> Figure:
    """A grid of heatmaps, one per head of `layer`, from maps (n_layers, n_heads, T, T)."""
    heads = list(range(maps.shape[1])) if heads is None else list(heads)
    nrows = -(-len(heads) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.0 * nrows), squeeze=False)
    for ax, h in zip(axes.flat, heads):
        ax.imshow(maps[layer, h].float().cpu().numpy(), cmap="viridis", vmin=0.0)
        ax.set_title(f"layer {layer}, head {h}", fontsize=9)
        ticks = range(len(tokens))
        ax.set_xticks(ticks, tokens, rotation=90, fontsize=6)
        ax.set_yticks(ticks, tokens, fontsize=6)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def attention_explorer(attn_fn: AttentionFn, sentences: Sequence[str], layer: int = 0,
                       head: int = 0) -> Any:
    """An ipywidgets box: choose a sentence, a layer and a head, see the heatmap.

    Display it in a notebook (`display(explorer)`); it needs a live kernel to react. Headless runs
    show nothing interactive, so lessons also draw a static figure with `plot_attention`.
    """
    import ipywidgets as widgets
    from IPython.display import display

    cache: dict[str, tuple[list[str], torch.Tensor]] = {}

    def get(sentence: str) -> tuple[list[str], torch.Tensor]:
        if sentence not in cache:
            cache[sentence] = attn_fn(sentence)
        return cache[sentence]

    _, maps = get(sentences[0])
    n_layers, n_heads = maps.shape[:2]
    pick = widgets.Dropdown(options=list(sentences), value=sentences[0], description="sentence",
                            layout=widgets.Layout(width="95%"))
    layer_w = widgets.IntSlider(value=min(layer, n_layers - 1), min=0, max=n_layers - 1,
                                description="layer")
    head_w = widgets.IntSlider(value=min(head, n_heads - 1), min=0, max=n_heads - 1,
                               description="head")
    out = widgets.Output()

    def draw(*_: Any) -> None:
        tokens, m = get(pick.value)
        with out:
            out.clear_output(wait=True)
            fig = plot_attention(m[layer_w.value, head_w.value], tokens,
                                 title=f"layer {layer_w.value}, head {head_w.value}")
            display(fig)
            plt.close(fig)

    for w in (pick, layer_w, head_w):
        w.observe(draw, names="value")
    draw()
    return widgets.VBox([pick, widgets.HBox([layer_w, head_w]), out])
