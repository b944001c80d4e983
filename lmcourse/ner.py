"""Named-entity tags: the BIO tag schemes (IOB1, IOB2), converting IOB1 to IOB2, the label list of a
set of entity types, and the entities (spans) a tag sequence marks.

A tag is `O` (outside every entity) or `B-TYPE` / `I-TYPE` (the beginning / inside of an entity of
type TYPE, e.g. `B-PER`, `I-LOC`). The two schemes differ in where `B-` appears:

- IOB2 (CoNLL-2003 as distributed today, the Hugging Face data sets): every entity starts with `B-`;
- IOB1 (the original CoNLL-2003 files): an entity starts with `I-`, and `B-` only marks an entity
  that directly follows another one of the same type.

The course works in IOB2; `iob1_to_iob2` converts. Everything here works on plain strings: the
module imports nothing from the course, so the data loaders (`lmcourse.data`) can use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

OUTSIDE = "O"
BEGIN, INSIDE = "B", "I"
SCHEMES = ("IOB1", "IOB2")


def split_tag(tag: str) -> tuple[str, str | None]:
    """("O", None) for `O`; (prefix, type) for `B-TYPE` or `I-TYPE`: split_tag("I-LOC") is
    ("I", "LOC"). Anything else raises ValueError saying what a BIO tag looks like."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, sep, kind = tag.partition("-")
    if prefix in (BEGIN, INSIDE) and sep and kind and not any(c.isspace() for c in kind):
        return prefix, kind
    if prefix in ("S", "E") and sep and kind:
        hint = " It looks like IOBES (S-/E- tags); convert the file to BIO first."
    elif "_" in tag and tag.split("_", 1)[0] in (BEGIN, INSIDE):
        hint = " Prefix and type are joined by a hyphen: B-PER, not B_PER."
    elif tag == OUTSIDE.lower() or tag[:2] in ("b-", "i-"):
        hint = " Tags are case-sensitive: O, B-..., I-... in capitals."
    elif sep == "" and tag.isalpha():
        hint = f" A bare type needs a prefix: B-{tag} or I-{tag}."
    else:
        hint = ""
    raise ValueError(f"{tag!r} is not a BIO tag (O, B-TYPE or I-TYPE).{hint}")


def starts_entity(tag: str, previous: str) -> bool:
    """Whether `tag` begins a new entity after `previous` (read leniently, as conlleval does: an
    `I-` after `O` or after another type also begins one)."""
    prefix, kind = split_tag(tag)
    if prefix == OUTSIDE:
        return False
    if prefix == BEGIN:
        return True
    return split_tag(previous)[1] != kind  # I-X after O or after Y begins an entity of type X


def detect_scheme(sentences: Iterable[Sequence[str]]) -> str:
    """"IOB1" when some entity starts with `I-` (at a sentence's start, after `O` or after another
    type), else "IOB2". (A file with no such entity reads the same in both schemes.)"""
    return "IOB1" if any(iob2_errors(tags) for tags in sentences) else "IOB2"


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """The same entities in IOB2: every `I-TYPE` that begins an entity becomes `B-TYPE`.
    Tags already in IOB2 come back unchanged."""
    out: list[str] = []
    previous = OUTSIDE
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == INSIDE and starts_entity(tag, previous):
            out.append(f"{BEGIN}-{kind}")
        else:
            out.append(tag)
        previous = tag
    return out


def iob2_errors(tags: Sequence[str]) -> list[int]:
    """Positions of tags that break IOB2: an `I-TYPE` that begins an entity (it should be
    `B-TYPE`). An empty list means the sequence is valid IOB2."""
    bad = []
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if split_tag(tag)[0] == INSIDE and starts_entity(tag, previous):
            bad.append(i)
        previous = tag
    return bad


def bio_labels(types: Sequence[str]) -> list[str]:
    """The label list for entity types, in the course's order: `O` first, then for each type in
    the order given `B-TYPE` then `I-TYPE`. bio_labels(["PER", "LOC"]) is
    ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]."""
    if len(set(types)) != len(types):
        raise ValueError(f"Entity types repeat: {list(types)}.")
    labels = [OUTSIDE]
    for kind in types:
        split_tag(f"{BEGIN}-{kind}")  # the type must make a valid tag
        labels += [f"{BEGIN}-{kind}", f"{INSIDE}-{kind}"]
    return labels


def entity_types(labels: Sequence[str]) -> list[str]:
    """The entity types of a label list, in order of first appearance:
    entity_types(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) is ["PER", "LOC"]."""
    types: list[str] = []
    for label in labels:
        kind = split_tag(label)[1]
        if kind is not None and kind not in types:
            types.append(kind)
    return types


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities a tag sequence marks, as (type, start, end) with `end` exclusive:
    ["B-PER", "I-PER", "O", "B-LOC"] gives [("PER", 0, 2), ("LOC", 3, 4)]. A stray `I-` (after `O`
    or another type) begins an entity, as in conlleval and seqeval's default mode."""
    spans: list[tuple[str, int, int]] = []
    kind: str | None = None  # the type of the entity open at this token, if any
    start = 0
    for i, tag in enumerate(tags):
        prefix, tag_kind = split_tag(tag)
        if kind is not None and (prefix != INSIDE or tag_kind != kind):
            spans.append((kind, start, i))  # the open entity ends before this tag
            kind = None
        if prefix != OUTSIDE and kind is None:
            kind, start = tag_kind, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def entities(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """(type, text) for each entity of a sentence, tokens joined by spaces:
    entities(["Hans-Peter", "Schmidt", "visited", "Jordan"], ["B-PER", "I-PER", "O", "B-LOC"])
    is [("PER", "Hans-Peter Schmidt"), ("LOC", "Jordan")]."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags.")
    return [(kind, " ".join(tokens[start:end])) for kind, start, end in entity_spans(tags)]


def spans_to_tags(length: int, spans: Iterable[tuple[str, int, int]]) -> list[str]:
    """IOB2 tags of a sentence of `length` tokens holding the entities `spans` ((type, start, end),
    end exclusive, not overlapping): the inverse of `entity_spans`."""
    tags = [OUTSIDE] * length
    for kind, start, end in spans:
        if not 0 <= start < end <= length:
            raise ValueError(f"Span ({kind!r}, {start}, {end}) does not fit {length} tokens.")
        if any(t != OUTSIDE for t in tags[start:end]):
            raise ValueError(f"Span ({kind!r}, {start}, {end}) overlaps another entity.")
        tags[start:end] = [f"{BEGIN}-{kind}"] + [f"{INSIDE}-{kind}"] * (end - start - 1)
    return tags
