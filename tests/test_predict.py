"""Tests for lmcourse.predict: word predictions to entities, and the predictor that serves raw text
(parity with transformers' token-classification pipeline, windows, batching, errors)."""

import random
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lmcourse import ner
from lmcourse.predict import Entity, NerPredictor, aggregate_spans
from tests.standins import StandInModel

LABELS = list(ner.bio_labels(["PER", "ORG", "LOC", "MISC"]))  # CoNLL-2003's order

# Names, split words (subwords), punctuation words with no space between them, several spaces:
# about 80 tokens, so a window of 16 or 32 tokens cuts it into several.
LONG_TEXT = ("Hans-Peter Schmidt flew from Frankfurt to New   York on Tuesday, said Lufthansa's "
             "spokeswoman Anna Müller. The U.S. Department of Transportation approved the route "
             "in 2019; critics at Greenpeace called it unnecessary. Tokenization splits unusual "
             "words like photosynthesis and Kaiserslautern into subwords.")


def _rows(entities):
    return [(e.type, e.start, e.end, e.text) for e in entities]


def _assert_same(got, want, tol=1e-5):
    """Two lists of entities: equal types, offsets and texts; scores within `tol`."""
    assert _rows(got) == _rows(want)
    for g, w in zip(got, want):
        assert g.score == pytest.approx(w.score, abs=tol)


# --------------------------------------------------------------------------- aggregate_spans


def test_loading_predict_imports_no_model_library():
    code = "import sys, lmcourse.predict; print(sorted(m for m in ('transformers', 'seqeval') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "[]", run.stderr


def test_aggregate_spans_by_hand():
    text = "Hans  Meyer met Anna in New   York ."
    offsets = [(0, 4), (6, 11), (12, 15), (16, 20), (21, 23), (24, 27), (30, 34), (35, 36)]
    assert [text[a:b] for a, b in offsets] == ["Hans", "Meyer", "met", "Anna", "in", "New", "York", "."]
    tags = ["B-PER", "I-PER", "O", "I-PER", "O", "B-LOC", "I-LOC", "O"]  # Anna: a stray I-PER
    scores = [0.9, 0.6, 0.99, 0.5, 0.98, 0.8, 0.4, 0.97]
    got = aggregate_spans(tags, scores, offsets, text)
    assert _rows(got) == [("PER", 0, 11, "Hans  Meyer"),       # the text's own two spaces
                          ("PER", 16, 20, "Anna"),              # a stray I- starts an entity
                          ("LOC", 24, 34, "New   York")]        # end: the LAST word's end
    assert [e.score for e in got] == pytest.approx([0.75, 0.5, 0.6])  # means, not max or first
    assert all(isinstance(e.score, float) for e in got)
    assert got[0] == Entity("PER", 0, 11, "Hans  Meyer", got[0].score)
    # B-X after X starts a new entity; a type change inside ends one; no space between words
    text = "the U.S.Paris"
    offsets = [(0, 3), (4, 5), (5, 6), (6, 7), (7, 8), (8, 13)]
    got = aggregate_spans(["O", "B-LOC", "I-LOC", "I-LOC", "I-LOC", "B-LOC"], [1.0] * 6, offsets, text)
    assert _rows(got) == [("LOC", 4, 8, "U.S."), ("LOC", 8, 13, "Paris")]
    got = aggregate_spans(["B-PER", "I-ORG"], [0.2, 0.4], [(0, 4), (5, 9)], "Anna Acme")
    assert _rows(got) == [("PER", 0, 4, "Anna"), ("ORG", 5, 9, "Acme")]
    assert aggregate_spans(["O", "O"], [0.9, 0.9], [(0, 2), (3, 5)], "it is") == []
    assert aggregate_spans([], [], [], "") == []


def test_aggregate_spans_rejects_inputs_that_do_not_fit():
    with pytest.raises(ValueError, match="2 word tags, 1 scores and 2 offsets"):
        aggregate_spans(["B-PER", "O"], [0.9], [(0, 4), (5, 7)], "Anna is")
    with pytest.raises(ValueError, match="outside the text of 7 characters"):
        aggregate_spans(["B-PER", "O"], [0.9, 0.8], [(0, 4), (5, 9)], "Anna is")
    with pytest.raises(ValueError, match="not a BIO tag"):
        aggregate_spans(["PER"], [0.9], [(0, 4)], "Anna")


# --------------------------------------------------------------------------- the real model


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
def pipeline(model, tokenizer):
    import transformers

    return transformers.pipeline("token-classification", model=model, tokenizer=tokenizer,
                                 aggregation_strategy="first", device="cpu")


def test_predictions_equal_the_pipeline_on_conll(model, tokenizer, pipeline):
    """`predict` gives, entity for entity, what the pipeline with aggregation_strategy="first"
    gives: type (entity_group), start, end, score (to 1e-4), on the first 200 test sentences of
    CoNLL-2003 (or the synthetic sample when $LMCOURSE_DATA_DIR has no CoNLL), each a raw text.

    The two find words differently: the predictor by the tokenizer's word_ids() (the pre-tokenizer's
    words), the pipeline by the "##" prefix (a token longer than its text piece continues a word).
    For WordPiece they agree: every later subword of a word has "##". The pipeline's `word` is not
    the text: it is rebuilt from the tokens (lower-cased by this uncased tokenizer, and with spaces:
    "U.S." comes back as "u. s."); it is compared with our text after the tokenizer's own
    normalization (lower case, accents stripped), spaces removed. `text` itself is checked against
    the pipeline's offsets: text[start:end]. No other difference was found, and none is allowed.
    """
    from lmcourse.data import load_conll

    sentences = load_conll("test", quiet=True)["tokens"][:200]
    texts = [" ".join(words) for words in sentences]
    got = NerPredictor(model, tokenizer, device="cpu", batch_size=32).predict(texts)
    want = pipeline(texts)
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    compared = multi_word = 0
    for text, ours, theirs in zip(texts, got, want):
        assert [(e.type, e.start, e.end) for e in ours] == \
            [(r["entity_group"], r["start"], r["end"]) for r in theirs], text
        for e, r in zip(ours, theirs):
            assert e.text == text[r["start"]:r["end"]]
            assert normalize(e.text).replace(" ", "") == normalize(r["word"]).replace(" ", "")
            assert e.score == pytest.approx(float(r["score"]), abs=1e-4)
            compared += 1
            multi_word += " " in e.text
    assert compared >= 100 and multi_word >= 10  # the comparison means something
    from lmcourse.predict import pipeline_entities

    as_entities = pipeline_entities(pipeline, texts[:20], batch_size=8)
    assert [[(e.type, e.start, e.end, e.text) for e in row] for row in as_entities] == \
        [[(r["entity_group"], r["start"], r["end"], t[r["start"]:r["end"]]) for r in rows]
         for t, rows in zip(texts[:20], want[:20])]


def test_aggregate_spans_equals_the_pipelines_grouping_on_random_tags(pipeline):
    """The pipeline's own grouping step (`group_entities`, which also averages the scores) on random
    word tags, stray I- and B-X B-X included, gives the entities aggregate_spans gives."""
    import numpy as np

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 12)
        tags = [rng.choice(LABELS) for _ in range(n)]
        scores = [rng.random() for _ in range(n)]
        words = [rng.choice(["ab", "c", "de", "fgh"]) for _ in range(n)]
        text, offsets = "", []
        for w in words:
            text += " " * rng.randint(0, 2)
            offsets.append((len(text), len(text) + len(w)))
            text += w
        pre = [{"entity": t, "score": np.float32(s), "word": w, "start": a, "end": b}
               for t, s, w, (a, b) in zip(tags, scores, words, offsets)]
        theirs = [g for g in pipeline.group_entities(pre) if g["entity_group"] != "O"] if pre else []
        ours = aggregate_spans(tags, scores, offsets, text)
        assert [(e.type, e.start, e.end) for e in ours] == \
            [(g["entity_group"], g["start"], g["end"]) for g in theirs], tags
        assert [e.score for e in ours] == pytest.approx([float(g["score"]) for g in theirs], abs=1e-6)


# --------------------------------------------------------------------------- windows


def _windows_by_hand(model, tokenizer, text, max_length, stride):
    """Each word's (tag, score, (start, end)), computed apart from the predictor: every window run
    alone, the windows laid on the whole text's tokens by position, each word's first subword read
    in the window where it is farthest from the window's edges (the smaller of the numbers of
    tokens before and after it in the window), ties to the earlier window. Also returns, per word,
    the windows holding its first subword and the chosen one."""
    import torch

    full = tokenizer(text, return_offsets_mapping=True)  # the whole text, no window
    word_ids, offsets, ids = full.word_ids(), full["offset_mapping"], full["input_ids"]
    content = [g for g, w in enumerate(word_ids) if w is not None]  # positions of text tokens
    enc = tokenizer(text, truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True)
    width = max_length - 2                       # text tokens per window ([CLS] ... [SEP])
    step = width - stride
    windows = []
    for k, window_ids in enumerate(enc["input_ids"]):
        cover = content[k * step:k * step + width]
        assert window_ids[1:-1] == [ids[g] for g in cover]  # windows as laid out here
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([window_ids]))["logits"][0]  # (T, C)
        windows.append((cover, torch.softmax(logits.float(), -1)))
    assert windows[-1][0][-1] == content[-1]  # the last window reaches the end
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    out, holders = [], []
    for w in range(word_ids[content[-1]] + 1):
        tokens = [g for g in content if word_ids[g] == w]
        first, best, held = tokens[0], None, []
        for k, (cover, probs) in enumerate(windows):
            if first in cover:
                j = cover.index(first)
                held.append((k, probs[j + 1]))
                if best is None or min(j, len(cover) - 1 - j) > best[0]:
                    best = (min(j, len(cover) - 1 - j), k, probs[j + 1])
        _, k, p = best
        out.append((labels[int(p.argmax())], float(p.max()), (offsets[first][0], offsets[tokens[-1]][1])))
        holders.append((held, k))
    return out, holders


@pytest.mark.parametrize("max_length, stride", [(32, 8), (16, 5), (16, 10)])  # (16, 10): up to 4 windows a word
def test_windows_equal_the_windows_run_by_hand(model, tokenizer, max_length, stride):
    predictor = NerPredictor(model, tokenizer, device="cpu", max_length=max_length, stride=stride)
    tags, scores, offsets = predictor.predict_words([LONG_TEXT])[0]
    want, holders = _windows_by_hand(model, tokenizer, LONG_TEXT, max_length, stride)
    assert tags == [t for t, _, _ in want]
    assert scores == pytest.approx([s for _, s, _ in want], abs=1e-5)
    assert offsets == [o for _, _, o in want]
    # every word once, in order, its offsets the span of its subwords
    assert all(a < b <= c for (a, b), (c, _) in zip(offsets, offsets[1:]))
    assert predictor.predict(LONG_TEXT) == aggregate_spans(tags, scores, offsets, LONG_TEXT)
    # the check means something: words held by several windows choose the first of them or a
    # later one, and every window holding a word gives it another score
    shared = [(held, k) for held, k in holders if len(held) > 1]
    assert any(k == held[0][0] for held, k in shared) and any(k != held[0][0] for held, k in shared)
    for held, _ in shared:
        window_scores = sorted(float(p.max()) for _, p in held)
        assert min(b - a for a, b in zip(window_scores, window_scores[1:])) > 1e-5


class PositionBlind(StandInModel):
    """A stand-in token classifier whose logits depend on the token id alone (a fixed random table),
    so a word gets the same prediction from any window that holds its first subword."""

    def __init__(self, vocab_size, labels):
        import torch

        g = torch.Generator().manual_seed(0)
        self.table = 3 * torch.randn(vocab_size, len(labels), generator=g)  # (V, C)
        self.config = SimpleNamespace(id2label=dict(enumerate(labels)), max_position_embeddings=512)
        self.training = True
        self.calls = []

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        self.calls.append(tuple(input_ids.shape))
        return {"logits": self.table[input_ids]}  # (B, T, C)


def test_windows_of_a_position_blind_model_equal_one_window(tokenizer):
    model = PositionBlind(tokenizer.vocab_size, LABELS)
    whole = NerPredictor(model, tokenizer, device="cpu")
    assert whole.predict_words([LONG_TEXT]) == NerPredictor(
        model, tokenizer, device="cpu", max_length=12, stride=3).predict_words([LONG_TEXT])
    got = NerPredictor(model, tokenizer, device="cpu", max_length=12, stride=3).predict(LONG_TEXT)
    assert got == whole.predict(LONG_TEXT)
    assert len(got) >= 10 and model.training  # many entities; the model is put back in its mode
    # the check means something: with 12 tokens a window, some windows begin inside a word
    full = tokenizer(LONG_TEXT, return_offsets_mapping=True)
    word_start = {}
    for w, (a, _) in zip(full.word_ids(), full["offset_mapping"]):
        if w is not None:
            word_start.setdefault(w, a)
    enc = tokenizer(LONG_TEXT, return_offsets_mapping=True, truncation=True, max_length=12,
                    stride=3, return_overflowing_tokens=True)
    assert any(enc["offset_mapping"][k][1][0] != word_start[enc.word_ids(k)[1]]
               for k in range(len(enc["input_ids"])))


# --------------------------------------------------------------------------- batches and order


def test_a_list_gives_what_each_text_gives_alone_whatever_the_batch_size(model, tokenizer):
    texts = ["Angela Merkel met Emmanuel Macron in Paris.", "", LONG_TEXT, "Paris",
             "The European Union fined Google 2.4 billion euros.", "   ",
             "Hans  Meyer , a Siemens engineer , lives in Munich ."]
    alone = [NerPredictor(model, tokenizer, device="cpu", max_length=32, stride=8).predict(t)
             for t in texts]
    assert alone[1] == [] and alone[5] == [] and sum(map(len, alone)) >= 15
    for batch_size in (1, 3, 16):
        predictor = NerPredictor(model, tokenizer, device="cpu", batch_size=batch_size,
                                 max_length=32, stride=8)
        got = predictor.predict(texts)
        assert len(got) == len(texts)
        for g, a in zip(got, alone):
            _assert_same(g, a)
    assert predictor.predict(tuple(texts[:2]))[0] == predictor.predict(texts[0])


def test_windows_are_batched_sorted_by_length_and_padded_to_the_longest(tokenizer):
    model = PositionBlind(tokenizer.vocab_size, LABELS)
    texts = ["Anna", LONG_TEXT, "Hans Meyer met Anna", "", "Paris is big", "Acme"]
    NerPredictor(model, tokenizer, device="cpu", batch_size=2, max_length=16, stride=4).predict(texts)
    enc = tokenizer(texts, truncation=True, max_length=16, stride=4, return_overflowing_tokens=True)
    lengths = sorted(len(ids) for ids in enc["input_ids"] if len(ids) > 2)  # "" has no word
    assert model.calls == [(len(lengths[i:i + 2]), lengths[i:i + 2][-1]) for i in range(0, len(lengths), 2)]


# --------------------------------------------------------------------------- errors, loading


def test_errors_say_what_to_do(folder, model, tokenizer):
    import transformers

    slow = transformers.BertTokenizerLegacy(vocab_file=str(folder / "vocab.txt"))
    assert not slow.is_fast
    with pytest.raises(ValueError, match="needs a fast tokenizer"):
        NerPredictor(model, slow, device="cpu")
    predictor = NerPredictor(model, tokenizer, device="cpu")
    assert predictor.max_length == 512  # the model's window by default
    assert predictor.predict("") == [] and predictor.predict("  \n ") == []
    assert predictor.predict([""]) == [[]] and predictor.predict([]) == []
    with pytest.raises(ValueError, match="a str or a list of str, not int"):
        predictor.predict(3)
    with pytest.raises(ValueError, match=r"Text 1 is NoneType, not str"):
        predictor.predict(["Anna", None])
    with pytest.raises(ValueError, match=r"Text 0 is list, not str.*' '.join\(words\)"):
        predictor.predict([["Hans", "Meyer"]])
    with pytest.raises(ValueError, match="pass a smaller stride"):
        NerPredictor(model, tokenizer, device="cpu", max_length=16, stride=14)
    with pytest.raises(ValueError, match="leaves no room"):
        NerPredictor(model, tokenizer, device="cpu", max_length=2)
    with pytest.raises(ValueError, match="batch_size=0"):
        NerPredictor(model, tokenizer, device="cpu", batch_size=0)
    unnamed = PositionBlind(tokenizer.vocab_size, ["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match="are not BIO tags.*id2label="):
        NerPredictor(unnamed, tokenizer, device="cpu")


def test_from_pretrained_loads_safetensors_and_refuses_pickles(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "ner")
    tokenizer.save_pretrained(tmp_path / "ner")
    assert (tmp_path / "ner" / "model.safetensors").is_file()
    loaded = NerPredictor.from_pretrained(tmp_path / "ner", device="cpu", max_length=32, stride=8)
    assert (loaded.max_length, loaded.stride) == (32, 8)
    text = "Angela Merkel met Emmanuel Macron in Paris."
    _assert_same(loaded.predict(text), NerPredictor(model, tokenizer, device="cpu").predict(text))
    (tmp_path / "ner" / "model.safetensors").rename(tmp_path / "ner" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no .safetensors weights"):
        NerPredictor.from_pretrained(tmp_path / "ner", device="cpu")


def test_save_ner_model_writes_safetensors_and_a_card_that_reloads(tmp_path, model, tokenizer):
    from lmcourse.data import CONLL2003_LABELS
    from lmcourse.predict import model_card, save_ner_model

    card = model_card("minilm-conll", CONLL2003_LABELS, base_model="all-MiniLM-L6-v2",
                      data="CoNLL-2003 English train split (14,041 sentences).",
                      metrics={"dev": {"f1": 0.9091, "precision": 0.9}, "test": {"f1": 0.8669}},
                      limits=["uncased: capitalisation, a strong cue for names, is lost"])
    folder = save_ner_model(model, tokenizer, tmp_path / "ner", card=card)
    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "README.md" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]  # nothing to unpickle
    text = (folder / "README.md").read_text()
    assert "| split | f1 | precision |" in text and "| dev | 0.9091 | 0.9000 |" in text
    assert "| test | 0.8669 |  |" in text and "LOC, MISC, ORG, PER" in text
    assert "- uncased: capitalisation" in text and "base_model: all-MiniLM-L6-v2" in text
    sentence = "Angela Merkel met Emmanuel Macron in Paris."
    _assert_same(NerPredictor.from_pretrained(folder, device="cpu").predict(sentence),
                 NerPredictor(model, tokenizer, device="cpu").predict(sentence))
    # saving again replaces the folder whole; a model whose labels are not tags is refused first
    save_ner_model(model, tokenizer, folder)
    assert not (folder / "README.md").exists()
    unnamed = PositionBlind(tokenizer.vocab_size, ["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match="not BIO tags"):
        save_ner_model(unnamed, tokenizer, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert "Not measured." in model_card("m", ["O"], "x", "d")


# --------------------------------------------------------------------------- raw-text scoring


def test_tags_from_entities_and_raw_text_scores():
    from lmcourse.predict import join_words, raw_text_scores, tags_from_entities

    words = ["The", "U.S.", "envoy", "Hans", "Meyer", "visited", "New", "York", "."]
    text, offsets = join_words(words)
    assert text == "The U.S. envoy Hans Meyer visited New York ." and offsets[1] == (4, 8)
    ents = [Entity("LOC", 4, 6, "U.", 0.9),            # part of a CoNLL word tags the whole word
            Entity("PER", 15, 25, "Hans Meyer", 0.8), Entity("LOC", 34, 42, "New York", 0.7)]
    tags = tags_from_entities(ents, offsets)
    assert tags == ["O", "B-LOC", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]
    gold = [tags, ["O", "B-ORG"]]
    sentences = [words, ["the", "Acme"]]
    perfect = raw_text_scores([ents, [Entity("ORG", 4, 8, "Acme", 1.0)]], sentences, gold)
    assert perfect["f1"] == 1.0
    half = raw_text_scores([ents[:1], []], sentences, gold)  # 1 of 4 found, no false alarm
    assert (half["precision"], half["recall"]) == (1.0, 0.25)
    assert raw_text_scores([], [], [])["f1"] == 0.0
    with pytest.raises(ValueError, match="1 entity lists for 2 sentences"):
        raw_text_scores([ents], sentences, gold)


def test_the_recipe_lesson_08_reruns_is_lesson_07s(monkeypatch):
    """LESSON07_MAIN_RUN holds lesson 07's parameters cell, mode for mode."""
    import json
    from pathlib import Path

    from lmcourse.predict import LESSON07_MAIN_RUN

    nb = json.loads((Path(__file__).parents[1] / "solutions" / "07_ner_finetuning.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"]
                if c["cell_type"] == "code" and "P = cfg.params(" in "".join(c["source"]))
    scope = {"cfg": SimpleNamespace(params=lambda **modes: modes)}
    exec(cell, scope)
    for mode, recipe in LESSON07_MAIN_RUN.items():
        assert {k: scope["P"][mode][k] for k in recipe} == recipe, mode


def test_load_or_fine_tune_trains_saves_and_then_loads(tmp_path, folder):
    from lmcourse.predict import load_or_fine_tune

    where = tmp_path / "ner"
    got, how = load_or_fine_tune(where, mode="smoke", device="cpu")
    assert got == where and how.startswith("fine-tuned with lesson 07's recipe")
    card = (where / "README.md").read_text()
    assert "| dev |" in card and "| test |" in card and "uncased" in card
    predictor = NerPredictor.from_pretrained(where, device="cpu")
    assert predictor.labels[0] == "O" and isinstance(predictor.predict("Hans Meyer lives in Paris"), list)
    stamp = (where / "model.safetensors").stat().st_mtime_ns
    assert load_or_fine_tune(where, mode="smoke") == (where, f"loaded from {where}")
    assert (where / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again


def test_from_pretrained_loads_a_folder_with_pruned_heads(tmp_path, model, tokenizer):
    from lmcourse import compress

    pruned = compress.keep_layers(model, range(model.config.num_hidden_layers))  # a copy
    compress.prune_heads(pruned, {0: [1, 5], 3: [0]})
    pruned.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    loaded = NerPredictor.from_pretrained(tmp_path / "pruned", device="cpu")
    assert compress.heads_per_layer(loaded.model)[:4] == [10, 12, 12, 11]
    text = "Angela Merkel met Emmanuel Macron in Paris."
    _assert_same(loaded.predict(text), NerPredictor(pruned, tokenizer, device="cpu").predict(text))


def test_top_label_is_softmax_argmax_and_its_probability():
    """lm.predict.top_label equals torch's softmax then max, including ties and large logits."""
    import torch

    from lmcourse.predict import top_label

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 9, generator=g) * 5
    logits[0, 0] = 1000.0                         # all equal and huge: ties go to the first label
    logits[1, 1, 4] = 1e4                         # one huge logit: probability 1, no overflow
    labels, scores = top_label(logits)
    want_scores, want_labels = torch.softmax(logits, -1).max(-1)
    assert labels.tolist() == want_labels.tolist()
    assert torch.allclose(torch.from_numpy(scores).float(), want_scores, atol=1e-6)
    assert scores[1, 1] == 1.0 and labels[0, 0] == 0 and abs(scores[0, 0] - 1 / 9) < 1e-6
