"""Tests for lmcourse.ner: BIO tags, IOB1 to IOB2, label lists, entity spans."""

import re

import pytest

from lmcourse import ner


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
