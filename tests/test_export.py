"""Tests for lmcourse.export: ONNX export with dynamic axes (parity with PyTorch, logits and
entities), ONNX Runtime behind NerPredictor, int8 dynamic quantization, sizes, errors."""

import logging
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmcourse import export  # noqa: E402
from lmcourse.predict import NerPredictor  # noqa: E402

N_SENTENCES = 200  # CoNLL test sentences the predictor comparisons run on


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def folder(minilm_dir):
    return minilm_dir


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


@pytest.fixture(scope="module")
def model(minilm_ner_model):
    """The packaged MiniLM with a random CoNLL head (tests/conftest.py)."""
    return minilm_ner_model


@pytest.fixture(scope="module")
def exported(model, tokenizer, tmp_path_factory):
    """The model exported once for the module (with its tokenizer): the .onnx path."""
    return export.export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", tokenizer)


@pytest.fixture(scope="module")
def quantized(exported):
    return export.quantize_int8(exported, exported.parent / "model-int8.onnx")


@pytest.fixture(scope="module")
def texts():
    from lmcourse.data import load_conll

    return [" ".join(words) for words in load_conll("test", quiet=True)["tokens"][:N_SENTENCES]]


@pytest.fixture(scope="module")
def torch_words(model, tokenizer, texts):
    """The PyTorch model's (tags, scores, offsets) per text: the reference of every comparison."""
    return NerPredictor(model, tokenizer, device="cpu").predict_words(texts)


def _batch(b, t, vocab, seed):
    """Random ids (b, t) with the last row padded after half its length (when b > 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)       # (B, T)
    mask = torch.ones(b, t, dtype=torch.long)                 # (B, T)
    if b > 1:
        mask[-1, max(1, t // 2):] = 0
    return ids, mask, torch.zeros_like(ids)


def _torch_logits(model, ids, mask, types):
    import torch

    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


class _Records(logging.Handler):
    """Keeps the log records of level WARNING and above that reach it."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _tiny_model(labels=None):
    """A tiny BERT token classifier (hidden 32, 2 layers): fast to export."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from lmcourse.data import CONLL2003_LABELS

    labels = list(CONLL2003_LABELS) if labels is None else labels
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(0)
    return BertForTokenClassification(config).eval()


# --------------------------------------------------------------------------- the exported file


def test_loading_export_imports_no_onnx_library():
    code = ("import sys, lmcourse.export; print(sorted(m for m in ('onnx', 'onnxruntime', "
            "'transformers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "[]", run.stderr


def test_export_writes_a_checked_graph_with_dynamic_axes_and_its_config(exported, model):
    import onnx

    graph = onnx.load(str(exported), load_external_data=False)
    onnx.checker.check_model(graph)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.graph.input) + list(graph.graph.output)}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                    "token_type_ids": ["batch", "sequence"],
                    "logits": ["batch", "sequence", len(model.config.id2label)]}
    # the config travels inside the file, and config + tokenizer beside it
    meta = {p.key: p.value for p in graph.metadata_props}
    assert '"I-MISC"' in meta[export.CONFIG_KEY]
    names = {f.name for f in exported.parent.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names
    assert not [n for n in names if n.startswith(".tmp")]  # no temp folder left behind


def test_onnx_logits_equal_torch_for_any_batch_and_length(exported, model):
    """Dynamic axes really dynamic: shapes unlike the export's example (2 x 8), padded rows."""
    import torch

    onnx_model = export.OnnxTokenClassifier(exported, threads=1)
    vocab = model.config.vocab_size
    for seed, (b, t) in enumerate([(1, 1), (1, 9), (3, 17), (16, 40), (2, 130)]):
        ids, mask, types = _batch(b, t, vocab, seed)
        want = _torch_logits(model, ids, mask, types)
        got = onnx_model(input_ids=ids, attention_mask=mask, token_type_ids=types)["logits"]
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.shape == want.shape == (b, t, 9)
        assert (got - want).abs().max().item() <= 1e-4, (b, t)
    # without token_type_ids the graph gets zeros, as BERT assumes
    got = onnx_model(input_ids=ids, attention_mask=mask)["logits"]
    assert (got - want).abs().max().item() <= 1e-4


def test_onnx_classifier_looks_like_the_model_to_the_predictor(exported, model):
    onnx_model = export.OnnxTokenClassifier(exported.parent)  # a folder: its model.onnx
    assert onnx_model.path == exported
    assert onnx_model.config.id2label == model.config.id2label
    assert onnx_model.config.max_position_embeddings == model.config.max_position_embeddings
    assert onnx_model.training is False
    assert onnx_model.to("cpu") is onnx_model and onnx_model.eval() is onnx_model
    assert onnx_model.train(True) is onnx_model and onnx_model.training is False
    assert "9 labels" in repr(onnx_model) and "CPUExecutionProvider" in repr(onnx_model)


def test_predictor_on_onnx_finds_the_same_entities_as_on_torch(exported, tokenizer, texts,
                                                              torch_words, model):
    onnx_predictor = NerPredictor(export.OnnxTokenClassifier(exported), tokenizer, device="cpu")
    got = onnx_predictor.predict_words(texts)
    n_words = 0
    for (tags, scores, offsets), (want_tags, want_scores, want_offsets) in zip(got, torch_words):
        assert tags == want_tags and offsets == want_offsets
        assert max((abs(a - b) for a, b in zip(scores, want_scores)), default=0.0) <= 1e-4
        n_words += len(tags)
    assert len(got) == N_SENTENCES and n_words > 2000
    # and the entities themselves, on a text longer than one window (max_length=32: windows)
    long_text = "  ".join(texts[:6])
    entities = [NerPredictor(m, tokenizer, device="cpu", max_length=32, stride=8).predict(long_text)
                for m in (model, onnx_predictor.model)]
    assert [(e.type, e.start, e.end, e.text) for e in entities[0]] == \
           [(e.type, e.start, e.end, e.text) for e in entities[1]]
    assert len(entities[0]) > 5
    for a, b in zip(*entities):
        assert a.score == pytest.approx(b.score, abs=1e-4)


def test_export_and_quantize_print_and_warn_nothing(capfd, tmp_path):
    """A notebook cell that exports and quantizes shows no chatter: the exporter's progress lines,
    its log records about torchvision, torch's own deprecation warnings, the quantizer's advice."""
    model = _tiny_model().train()  # export must switch dropout off, and switch it back after
    # torch logs through handlers it made at import ("torch", "torch.onnx": they do not
    # propagate, and pytest's capture cannot see what they write): collect the records at every
    # logger that stops propagation, and at the root for the rest
    records = _Records()
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger) and not logger.propagate]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = export.export_onnx(model, tmp_path)
            int8 = export.quantize_int8(path, tmp_path / "model-int8.onnx")
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    out, err = capfd.readouterr()
    assert path == tmp_path / "model.onnx" and path.is_file() and int8.is_file()
    assert out == "" and err == "", (out, err)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in records.records] == []
    assert not (tmp_path / "config.json").exists()  # no tokenizer given: the file alone
    assert export.OnnxTokenClassifier(path).config.id2label == model.config.id2label
    assert model.training is True


# --------------------------------------------------------------------------- int8


def test_int8_is_about_four_times_smaller(exported, quantized):
    fp32, int8 = export.file_size_mb(exported), export.file_size_mb(quantized)
    # measured: 86.8 MiB -> 22.2 MiB (3.9x): every MatMul weight and the embedding tables in int8;
    # only biases, LayerNorm and scales stay float. 3.5 leaves margin for other opsets/versions.
    assert fp32 / int8 >= 3.5, (fp32, int8)
    assert fp32 > 80  # MiniLM-L6: 22.7M parameters in float32


def test_int8_logits_are_close_but_not_equal(exported, quantized, model):
    import onnx
    import torch

    meta = {p.key for p in onnx.load(str(quantized), load_external_data=False).metadata_props}
    assert export.CONFIG_KEY in meta  # the config travels inside the quantized file too
    int8_model = export.OnnxTokenClassifier(quantized)
    assert int8_model.config.id2label == model.config.id2label
    ids, mask, types = _batch(8, 48, model.config.vocab_size, seed=7)
    want = _torch_logits(model, ids, mask, types)
    got = int8_model(ids, mask, types)["logits"]
    assert got.dtype == torch.float32 and got.shape == want.shape
    diff = (got - want).abs()[mask.bool()]  # real tokens only
    # measured on this random head (logits within +-0.6): max 0.15, mean 0.012; the argmax
    # stays on 0.875 of the tokens (one scale per matrix, per_channel=False: 0.21, 0.025, 0.71)
    assert diff.max().item() > 1e-3  # really quantized: not the fp32 graph again
    assert diff.mean().item() < 0.05 and diff.max().item() < 0.5
    same = (got.argmax(-1) == want.argmax(-1))[mask.bool()].float().mean().item()
    assert same > 0.7


def test_int8_predictions_agree_on_most_words(quantized, tokenizer, texts, torch_words):
    int8 = NerPredictor(export.OnnxTokenClassifier(quantized), tokenizer, device="cpu")
    got = int8.predict_words(texts)
    pairs = [(a, b) for (tags, _, _), (want, _, _) in zip(got, torch_words)
             for a, b in zip(tags, want)]
    agree = sum(a == b for a, b in pairs) / len(pairs)
    # measured: 0.88 of the 2972 words keep their tag (per_channel=False: 0.76). A random head's
    # logits are near-ties (the median gap between the top two is 0.03), so int8's rounding flips
    # many argmaxes; fine-tuned on CoNLL, the same model keeps 99.65% of the word tags and its F1.
    # The bound is loose: it catches a broken model, not a change of scales.
    assert agree >= 0.75, agree
    assert agree < 1.0  # quantized predictions are not the fp32 ones verbatim


def test_quantize_keeps_the_source_and_writes_a_new_file(exported, quantized):
    assert quantized != exported and quantized.is_file() and exported.is_file()
    assert not [f for f in exported.parent.iterdir() if f.name.startswith(".tmp")]


# --------------------------------------------------------------------------- sizes and errors


def test_file_size_mb_counts_weights_only(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 2**20)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 2**21)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 2**19)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 2**20)  # not weights
    assert export.file_size_mb(tmp_path / "model.onnx") == pytest.approx(3.0)  # + external data
    assert export.file_size_mb(tmp_path / "model.safetensors") == pytest.approx(0.5)
    assert export.file_size_mb(tmp_path) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="No file or folder"):
        export.file_size_mb(tmp_path / "missing")


def test_missing_onnx_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match=r"No ONNX model at .*model\.onnx.*export_onnx"):
        export.OnnxTokenClassifier(tmp_path)
    with pytest.raises(ValueError, match=r"No ONNX model at .*nothing\.onnx.*export_onnx"):
        export.quantize_int8(tmp_path / "nothing.onnx", tmp_path / "out.onnx")


def test_quantize_refuses_to_overwrite_its_input(exported):
    with pytest.raises(ValueError, match="is the input model: pass another name"):
        export.quantize_int8(exported, exported.parent)  # the folder's model.onnx: the input


def test_model_without_labels_is_refused_with_the_fix(tmp_path):
    no_labels = SimpleNamespace(config=SimpleNamespace(), training=False)
    with pytest.raises(ValueError, match=r"no config\.id2label.*id2label="):
        export.export_onnx(no_labels, tmp_path / "m.onnx")
    # transformers' default labels (LABEL_0, ...) are no BIO tags: refused before exporting
    with pytest.raises(ValueError, match="not BIO tags"):
        export.export_onnx(_tiny_model(["LABEL_0", "LABEL_1"]), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_onnx_file_without_config_is_refused_with_the_fix(tmp_path):
    """An ONNX file from elsewhere, with no config metadata and no config.json beside it."""
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    logits = helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                              [ids], [logits])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match=r"carries no config.*config\.save_pretrained"):
        export.OnnxTokenClassifier(tmp_path / "other.onnx")


def test_providers_that_onnxruntime_lacks(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        export.OnnxTokenClassifier(exported, providers=["CUDAExecutionProvider"])
    with pytest.warns(UserWarning, match="running on .'CPUExecutionProvider'"):
        m = export.OnnxTokenClassifier(exported, providers=["CUDAExecutionProvider",
                                                            "CPUExecutionProvider"])
    assert m.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="threads=0"):
        export.OnnxTokenClassifier(exported, threads=0)
