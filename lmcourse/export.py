"""Exporting the NER model (lesson 08): ONNX for ONNX Runtime, and int8 dynamic quantization.

A PyTorch model is Python code plus weights: to run it you need Python, torch and transformers,
and every call goes through the Python interpreter layer by layer. ONNX describes the same
computation as a graph of standard operators (MatMul, Add, Softmax, LayerNormalization, ...) with
the weights stored beside it, in one file. Any ONNX runtime (C++, C#, Java, JavaScript, a phone)
can run that file, and ONNX Runtime fuses and schedules the graph's operators for the hardware
without the interpreter in the loop.

The three steps of the lesson, each a function here:

1. `export_onnx`: trace the model into an ONNX graph, with the batch and sequence axes left
   *dynamic* (symbolic sizes), so one file serves any number of texts of any length;
2. `OnnxTokenClassifier`: run the file with ONNX Runtime behind the interface `NerPredictor`
   expects of a model, so the predictor (windows, batching, spans) is reused unchanged, and the
   two are compared entity for entity;
3. `quantize_int8`: store the weights as 8-bit integers (dynamic quantization): about 4x smaller
   weights and faster matrix products on CPU, at a small cost in accuracy that is measured, not
   assumed.

How the files travel: the .onnx file holds the graph and the weights; `export_onnx` also writes
the model's transformers config (labels, `max_position_embeddings`, ...) into the file's metadata,
so the file alone is enough to label entities (`quantize_int8` keeps it). The tokenizer is not part
of the graph: `export_onnx(..., tokenizer=tok)` saves it (and config.json) in the file's folder,
which then holds everything a server needs:

    folder/model.onnx       the graph and fp32 weights (and its metadata: the config)
    folder/model-int8.onnx  the int8 version, made by quantize_int8
    folder/config.json, tokenizer.json, tokenizer_config.json, ...

onnx, onnxruntime and transformers are imported inside the functions that need them, so that
loading this module stays free of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmcourse.predict import model_labels

if TYPE_CHECKING:
    import torch

ONNX_FILE = "model.onnx"             # the file name a folder's ONNX model has by default
CONFIG_KEY = "transformers_config"   # the ONNX metadata entry that holds the config's JSON
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data")  # what file_size_mb sums
_PROTOBUF_LIMIT = 2 * 10**9  # a protobuf message (an .onnx file without external data) stays below 2 GB


# --------------------------------------------------------------------------- exporting


def _onnx_path(path: str | Path) -> Path:
    """The .onnx file a path names: the path itself when it ends in .onnx, else folder/model.onnx."""
    path = Path(path).expanduser()
    return path if path.suffix == ".onnx" else path / ONNX_FILE


def _model_inputs(model: Any) -> list[str]:
    """The inputs the export feeds: input_ids and attention_mask, and token_type_ids when the
    model's forward takes them (BERT does; DistilBERT does not)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    missing = [name for name in INPUT_NAMES[:2] if name not in params]
    if missing:
        raise ValueError(f"The model's forward takes no {', '.join(missing)}: export_onnx exports "
                         "token classifiers called as model(input_ids=..., attention_mask=...), "
                         "such as transformers' AutoModelForTokenClassification.")
    return [name for name in INPUT_NAMES if name in params]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what torch.onnx.export (dynamo) prints about itself, and nothing else.

    Each entry names its source, so a new or real warning still shows:
    - progress lines ("[torch.onnx] Run decompositions... ✅"): export's `verbose=False` stops them;
    - "torchvision is not installed. Skipping torchvision::nms" (4 log records, logger
      torch.onnx._internal.exporter._registration): the exporter's operator table lists
      torchvision's detection operators; a text model uses none of them;
    - FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated": raised inside torch's own
      decomposition step (it deep-copies torch's pytree specs), not by our code; torch's to fix;
    - UserWarning "The axis name: batch will not be used, since it shares the same shape
      constraints with another axis: batch": raised for every input after the first that shares
      the Dim "batch" (or "sequence"), although the name IS used (the graph's inputs all read
      (batch, sequence); tests/test_export.py checks it);
    - "Evaluation failed: ..." (logger onnxscript.optimizer._constant_folding): the exporter's
      optimizer tried to precompute a node on constant inputs, could not, and left the node in
      the graph as it was; the graph is unchanged and correct.
    """
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    failed_folding = _DropMessage("Evaluation failed:")
    folding.addFilter(failed_folding)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used, since "
                                    "it shares the same shape constraints", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)
        folding.removeFilter(failed_folding)


class _DropMessage(logging.Filter):
    """A logging filter that drops the records whose message starts with `start`."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def _example_inputs(model: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """A batch of 2 windows of 8 tokens, the second padded after 5: the example the exporter
    traces. Sizes 0 and 1 would be specialised (baked in as constants) by torch.export, so both
    axes are at least 2; the padding makes the traced graph take the masked path."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    g = torch.Generator().manual_seed(0)  # a private generator: the example's ids don't matter
    ids = torch.randint(0, vocab, (2, 8), generator=g)         # (B, T)
    mask = torch.ones(2, 8, dtype=torch.long)                  # (B, T)
    mask[1, 5:] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    device = next(model.parameters()).device  # the example goes where the weights are
    return {name: example[name].to(device) for name in names}


def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def export_onnx(
    model: Any,
    path: str | Path,
    tokenizer: Any | None = None,
    *,
    opset: int | None = None,
) -> Path:
    """Export a transformers token classifier to ONNX; returns the .onnx file's path.

    `path` is the file to write (`.../name.onnx`) or a folder (the file is `folder/model.onnx`).
    The graph's inputs are input_ids, attention_mask (and token_type_ids when the model takes
    them), each (batch, sequence) int64; its output is logits (batch, sequence, num_labels) float32.

    Why dynamic axes: exporting runs the model once on an example batch and records the operations.
    A size that is not marked dynamic is recorded as a constant, and the file would then accept
    only batches of exactly the example's shape. Marking both axes dynamic makes the graph compute
    with symbolic sizes ("batch", "sequence"), so one file takes one text or sixteen, of 5 tokens or
    512. (The exporter is torch.onnx.export with dynamo=True, the default since torch 2.9: it
    captures the model with torch.export and fails loudly where a size would be baked in; the
    legacy TorchScript tracer is deprecated and only warns.)

    The model's config (labels, `max_position_embeddings`, ...) goes into the file's metadata;
    with `tokenizer`, the tokenizer and config.json are saved in the file's folder as well, so the
    folder holds all that `OnnxTokenClassifier` and a `NerPredictor` need. The file is written
    under a temporary name and renamed (a crash never leaves half a file under the name) and
    checked with `onnx.checker`. `opset`: the ONNX operator set (default: the exporter's).
    """
    import onnx
    import torch

    model_labels(model)  # refuse a model whose labels are missing or not BIO tags, before exporting
    out = _onnx_path(path)
    names = _model_inputs(model)
    example = _example_inputs(model, names)
    # every input has the same two symbolic sizes: one Dim object each, shared by all inputs, so
    # the graph's inputs and output are all (batch, sequence) and torch.export checks that the
    # model treats them as equal sizes
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in names}

    was_training = model.training
    model.eval()  # dropout off: the graph records the inference computation
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(model, (), kwargs=example, dynamo=True,
                                        dynamic_shapes=dynamic, input_names=names,
                                        output_names=[OUTPUT_NAME], opset_version=opset,
                                        verbose=False)
    finally:
        model.train(was_training)
    program.model.metadata_props[CONFIG_KEY] = model.config.to_json_string()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        # weights over 2 GB cannot sit inside the protobuf: they go to `name.onnx.data` beside it
        external = _param_bytes(model) > _PROTOBUF_LIMIT * 0.9
        program.save(str(tmp / out.name), external_data=external)
        onnx.checker.check_model(str(tmp / out.name))  # a path: works for external data too
        for f in sorted(tmp.iterdir(), key=lambda f: f.suffix == ".onnx"):  # the .onnx last
            os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if tokenizer is not None:
        model.config.save_pretrained(out.parent)
        tokenizer.save_pretrained(out.parent)
    return out


# --------------------------------------------------------------------------- running


def _config_from(path: Path, metadata: dict[str, str]) -> Any:
    """The transformers config of an exported model: from the file's metadata, else config.json
    in its folder (an ONNX file exported by another tool)."""
    from transformers import AutoConfig, PretrainedConfig

    if CONFIG_KEY in metadata:
        values = json.loads(metadata[CONFIG_KEY])
    elif (path.parent / "config.json").is_file():
        values = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))
    else:
        raise ValueError(f"{path} carries no config (no '{CONFIG_KEY}' metadata) and its folder "
                         "holds no config.json, so its labels are unknown. Export it with "
                         "lm.export.export_onnx(model, path), or save the model's config beside "
                         "it: model.config.save_pretrained(folder).")
    kind = values.pop("model_type", None)
    return AutoConfig.for_model(kind, **values) if kind else PretrainedConfig(**values)


class OnnxTokenClassifier:
    """An exported token classifier run by ONNX Runtime, shaped like the PyTorch model for
    `NerPredictor`: `model(input_ids=..., attention_mask=..., token_type_ids=...)` with torch
    tensors (B, T) returns {"logits": (B, T, C) float32 tensor}, on the inputs' device; `config`
    holds id2label and max_position_embeddings; `to`, `eval` and `train` do nothing (the graph is
    always in inference mode and runs where its execution provider puts it).

    `path` is an .onnx file or a folder holding model.onnx. `threads` sets ONNX Runtime's
    intra-op threads (the threads one matrix product is split over; None: ONNX Runtime's
    default, one per physical core). `providers` lists execution providers in order of preference
    (default: CPUExecutionProvider). A provider that this onnxruntime build lacks (CUDA needs the
    onnxruntime-gpu package) is dropped with a warning; if none is left, ValueError.
    """

    training = False

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = _onnx_path(path)
        if not self.path.is_file():
            raise ValueError(f"No ONNX model at {self.path}: export one first with "
                             "lm.export.export_onnx(model, path) (a folder's model is "
                             f"{ONNX_FILE}), or pass the path of an existing .onnx file.")
        wanted = list(providers) if providers is not None else ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        chosen = [p for p in wanted if p in available]
        if not chosen:
            raise ValueError(f"None of the providers {wanted} is in this onnxruntime build, which "
                             f"has {available}. For CUDA install onnxruntime-gpu instead of "
                             "onnxruntime; or leave providers=None for the CPU.")
        if len(chosen) < len(wanted):
            warnings.warn(f"onnxruntime has no {sorted(set(wanted) - set(chosen))}; running on "
                          f"{chosen}.", stacklevel=2)
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads={threads}; pass at least 1, or None for "
                                 "onnxruntime's default.")
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = _config_from(self.path, self.session.get_modelmeta().custom_metadata_map)
        model_labels(self)  # the labels must name BIO tags, as the predictor will require

    def __repr__(self) -> str:
        return (f"OnnxTokenClassifier({str(self.path)!r}, {len(self.config.id2label)} labels, "
                f"providers={self.session.get_providers()})")

    def to(self, *args: Any, **kwargs: Any) -> OnnxTokenClassifier:
        """Nothing to move: the execution provider chose the device when the session was built."""
        return self

    def eval(self) -> OnnxTokenClassifier:
        """Nothing to switch: an exported graph has no dropout; it is always in inference mode."""
        return self

    def train(self, mode: bool = True) -> OnnxTokenClassifier:
        """Nothing to switch (see eval); an exported graph cannot be trained."""
        return self

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"logits": (B, T, C) float32} for token ids and mask (B, T). token_type_ids default to
        zeros when the graph takes them, and are not fed to a graph that does not take them."""
        import numpy as np
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        feed = {}
        for name in self.input_names:
            value = given.get(name)
            if value is None:
                if name != "token_type_ids":
                    raise ValueError(f"The ONNX model needs the input {name!r}.")
                value = torch.zeros_like(input_ids)
            feed[name] = np.ascontiguousarray(value.detach().cpu().numpy().astype(np.int64))
        (logits,) = self.session.run([OUTPUT_NAME], feed)                       # (B, T, C)
        return {"logits": torch.from_numpy(logits).to(input_ids.device)}


# --------------------------------------------------------------------------- int8 quantization


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    per_channel: bool = True,
) -> Path:
    """Dynamic int8 quantization of an exported model (ONNX Runtime's quantize_dynamic); returns
    the new file's path (`out_path` when it ends in .onnx, else out_path/model.onnx). The config
    in the file's metadata is kept (quantize_dynamic copies metadata).

    What it does to the weights: each weight matrix (the constant operand of every MatMul) is
    stored as int8 q in [-127, 127] plus a float scale, w ~ scale * q; the embedding tables that
    Gather reads as uint8 with a scale and a zero point, w ~ scale * (q - zero_point). One byte per
    weight instead of float32's four, so the file shrinks almost 4x (biases, LayerNorm parameters
    and the scales stay float, a tiny share). `per_channel=True` gives every output column of a
    MatMul weight its own scale instead of one for the whole matrix: a column of small weights
    then keeps its resolution next to one with large weights. Measured on MiniLM fine-tuned on CoNLL (500 test sentences): one scale per matrix
    changed 0.75% of the word tags and cost 1.0 F1 point, per column 0.35% and no F1 loss, at the
    same speed; hence the default.

    What it does to the activations: their values are not known before the text arrives, so they
    are quantized *dynamically*, at run time. Before each MatMul, the runtime measures the range
    (min, max) of the activation at hand, maps it onto 256 uint8 levels (DynamicQuantizeLinear),
    multiplies integers by integers with int32 accumulation (MatMulInteger), and scales the result
    back to float for the next operation (softmax, LayerNorm, GELU stay in float). No calibration
    data is needed; static quantization would instead fix activation scales from a calibration set.

    Why int8 helps on CPU: a transformer spends its time in matrix products over large weight
    matrices. int8 weights move 4x fewer bytes from memory into the caches, and CPU vector units
    multiply-accumulate four 8-bit numbers in the room of one float32 (AVX2, AVX-512 VNNI, ARM's
    dot-product instructions). The cost: rounding weights and activations to 256 levels perturbs
    the logits slightly, and a word whose top two labels were close can flip; measure it. (On
    x86 CPUs without VNNI, uint8 x int8 products can saturate; if accuracy drops there, ONNX
    Runtime's quantize_dynamic(..., reduce_range=True) is the fix.)

    Not done: ONNX Runtime's quant_pre_process (symbolic shape inference and graph optimisation
    before quantizing). Measured on this graph it changed no prediction and no speed beyond noise
    (the session optimises the graph when it loads anyway), and its symbolic shape inference fails
    on torch.onnx's dynamo graphs unless skipped (leaving sym_shape_infer_temp.onnx and a 90 MB
    data file in the working folder).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = _onnx_path(onnx_path), _onnx_path(out_path)
    if not src.is_file():
        raise ValueError(f"No ONNX model at {src}: export one first with "
                         "lm.export.export_onnx(model, path).")
    if out == src:
        raise ValueError(f"out_path {out} is the input model: pass another name, e.g. "
                         f"{src.with_name(src.stem + '-int8.onnx')}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        with _quiet_quantizer():
            quantize_dynamic(str(src), str(tmp / out.name), weight_type=QuantType.QInt8,
                             per_channel=per_channel,
                             # a source whose weights are in a .data file (over 2 GB) gives one too
                             use_external_data_format=src.with_name(src.name + ".data").is_file())
        onnx.checker.check_model(str(tmp / out.name))
        for f in sorted(tmp.iterdir(), key=lambda f: f.suffix == ".onnx"):  # the .onnx last
            os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop one log record of quantize_dynamic, which it logs on the root logger (a notebook shows
    it as a WARNING): "Please consider to run pre-processing before quantization". Skipping the
    pre-processing is quantize_int8's measured choice (see its docstring)."""
    root = logging.getLogger()
    drop = _DropMessage("Please consider to run pre-processing before quantization")
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


# --------------------------------------------------------------------------- sizes


def file_size_mb(path: str | Path) -> float:
    """Size on disk in MiB (2**20 bytes) of a model: a file (an .onnx file counts its external
    data file `name.onnx.data` too, when there is one), or a folder's weight files (.safetensors,
    .bin, .pt, .pth, .onnx, .data; config and tokenizer files are a few kB and are not counted)."""
    path = Path(path).expanduser()
    if path.is_file():
        files = [path] + ([path.with_name(path.name + ".data")] if path.suffix == ".onnx" else [])
    elif path.is_dir():
        files = [f for f in path.rglob("*") if f.suffix in WEIGHT_SUFFIXES]
    else:
        raise ValueError(f"No file or folder at {path}.")
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20
