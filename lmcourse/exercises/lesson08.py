"""Checked exercise of lesson 08 (deploying the NER model): word predictions to entities with
character offsets, the last step of the predictor that serves raw text."""

from __future__ import annotations

from typing import Any

from lmcourse import ner, predict
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register
from lmcourse.predict import Entity

LESSON = "08_deployment"

FIELDS = ("type", "start", "end", "text", "score")


def _rows(entities: Any) -> list[tuple]:
    """Entities as (type, start, end, text, score) tuples, so that scores compare with a tolerance.
    Anything that is not a list of entities raises: it is then compared as it is (and is wrong)."""
    if not isinstance(entities, (list, tuple)):
        raise TypeError("not a list")
    rows = []
    for e in entities:
        if isinstance(e, (tuple, list, dict)) or not all(hasattr(e, f) for f in FIELDS):
            raise TypeError("not an Entity")
        rows.append(tuple(getattr(e, f) for f in FIELDS))
    return rows


def _words(text: str) -> list[tuple[int, int]]:
    """(start, end) of each space-separated word of `text`."""
    out, start = [], None
    for i, c in enumerate(text + " "):
        if c != " " and start is None:
            start = i
        elif c == " " and start is not None:
            out.append((start, i))
            start = None
    return out


def _case(name: str, text: str, tags: list[str], scores: list[float], hint: str,
          offsets: list[tuple[int, int]] | None = None) -> Case:
    return Case(name, (tags, scores, offsets if offsets is not None else _words(text), text),
                hint=hint, canonical=_rows)


def _cases() -> list[Case]:
    return [
        _case("two entities", "Hans Meyer visited Paris",
              ["B-PER", "I-PER", "O", "B-LOC"], [0.9, 0.7, 0.99, 0.8],
              hint="an entity runs from its FIRST word's start to its LAST word's end (character "
                   "offsets, end exclusive), its text is text[start:end], its score the MEAN of its "
                   "words' scores: Entity('PER', 0, 10, 'Hans Meyer', 0.8)."),
        _case("stray I- after O", "He met Anna Lee today",
              ["O", "O", "I-PER", "I-PER", "O"], [0.95, 0.9, 0.6, 0.8, 0.97],
              hint="an I-X that does not continue an entity of type X starts one (the policy of "
                   "lm.ner.entity_spans and of the pipeline)."),
        _case("adjacent B-X B-X", "Paris London Rome",
              ["B-LOC", "B-LOC", "I-LOC"], [0.9, 0.6, 0.95],
              hint="every B- starts a new entity, even right after one of the same type: Paris, "
                   "then London Rome."),
        _case("entity at the end of the text", "Made by Acme Corp",
              ["O", "O", "B-ORG", "I-ORG"], [0.99, 0.98, 0.7, 0.5],
              hint="an entity still open after the last word ends there: close it after the loop."),
        _case("words separated by several spaces", "Hans   Peter  Schmidt  left",
              ["B-PER", "I-PER", "I-PER", "O"], [0.8, 0.5, 0.9, 0.99],
              hint="take start and end from the OFFSETS and slice the text: the entity's text keeps "
                   "the text's own spaces ('Hans   Peter  Schmidt'), it is not the words joined."),
        _case("words with no space between them", "the U.S. economy",
              ["O", "B-LOC", "I-LOC", "I-LOC", "I-LOC", "O"], [0.9, 0.6, 0.7, 0.8, 0.5, 0.99],
              offsets=[(0, 3), (4, 5), (5, 6), (6, 7), (7, 8), (9, 16)],
              hint="BERT's pre-tokenizer makes 'U.S.' four words with no space between them: the "
                   "entity is text[4:8] == 'U.S.', never 'U . S .'."),
        _case("type changes inside", "Anna Berlin",
              ["B-PER", "I-LOC"], [0.7, 0.9],
              hint="an I-LOC after a PER word ends the PER entity and starts a LOC one."),
        _case("no entity", "it rained all day",
              ["O", "O", "O", "O"], [0.9, 0.8, 0.95, 0.99],
              hint="only O: no entity, an empty list."),
        _case("empty text", "", [], [],
              hint="no words: an empty list."),
    ]


def _entities(tags, scores, offsets, text, *, strict=False, end_word=None, score=None, piece=None):
    """The reference with one step swapped, to write the catalog's mistakes."""
    out = []
    for kind, first, stop in ner.entity_spans(tags, strict):
        last = stop - 1 if end_word is None else end_word(first, stop)
        start, end = offsets[first][0], offsets[last][1]
        s = sum(scores[first:stop]) / (stop - first) if score is None else score(scores[first:stop])
        t = text[start:end] if piece is None else piece(text, offsets[first:stop])
        out.append(Entity(kind, start, end, t, s))
    return out


def _end_of_first_word(tags, scores, offsets, text):
    return _entities(tags, scores, offsets, text, end_word=lambda first, stop: first)


def _score_max(tags, scores, offsets, text):
    return _entities(tags, scores, offsets, text, score=max)


def _score_first(tags, scores, offsets, text):
    return _entities(tags, scores, offsets, text, score=lambda s: s[0])


def _stray_i_dropped(tags, scores, offsets, text):
    return _entities(tags, scores, offsets, text, strict=True)


def _b_continues(tags, scores, offsets, text):
    merged, kind = [], None
    for tag in tags:  # a B-X right after X is read as I-X
        prefix, tag_kind = ner.split_tag(tag)
        merged.append(f"I-{tag_kind}" if prefix == "B" and tag_kind == kind else tag)
        kind = tag_kind
    return _entities(merged, scores, offsets, text)


def _joined_words(tags, scores, offsets, text):
    return _entities(tags, scores, offsets, text,
                     piece=lambda t, spans: " ".join(t[a:b] for a, b in spans))


def _word_indices(tags, scores, offsets, text):
    out = []
    for kind, first, stop in ner.entity_spans(tags):
        words = " ".join(text[a:b] for a, b in offsets[first:stop])
        out.append(Entity(kind, first, stop, words, sum(scores[first:stop]) / (stop - first)))
    return out


def _not_entities_advice(got, want, case: Case) -> Diagnosis | None:
    """A list of tuples or dicts where Entity objects are expected."""
    if isinstance(got, (list, tuple)) and got and any(
            isinstance(e, (tuple, list, dict)) or not all(hasattr(e, f) for f in FIELDS) for e in got):
        return Diagnosis("not Entity objects", "return a list of lm.predict.Entity(type, start, end, "
                         "text, score), one per entity, not tuples or dicts.")
    return None


def _last_entity_advice(got, want, case: Case) -> Diagnosis | None:
    """Every entity but one that runs to the last word."""
    try:
        rows, ref = _rows(got), _rows(want)
    except TypeError:
        return None
    offsets = case.args[2]
    if ref and rows == ref[:-1] and ref[-1][2] == offsets[-1][1]:
        return Diagnosis("last entity lost", "an entity that runs to the last word is lost: after "
                         "the loop, add the entity that is still open.")
    return None


def _end_advice(got, want, case: Case) -> Diagnosis | None:
    """The right entities, types and starts, with other ends."""
    try:
        rows, ref = _rows(got), _rows(want)
    except TypeError:
        return None
    if len(rows) == len(ref) and rows and [r[:2] for r in rows] == [r[:2] for r in ref] \
            and any(r[2] != w[2] for r, w in zip(rows, ref)):
        return Diagnosis("entity ends", "your entities start right but end elsewhere: end is the "
                         "END offset of the entity's LAST word (exclusive, like a slice), so that "
                         "text[start:end] is the whole entity.")
    return None


def _count_advice(got, want, case: Case) -> Diagnosis | None:
    """Too many or too few entities: the case's rule is the advice."""
    if isinstance(got, (list, tuple)) and len(got) != len(want):
        return Diagnosis("entity count", f"found {len(got)} entities where the tags mark "
                         f"{len(want)}: {case.hint}")
    return None


def _text_advice(got, want, case: Case) -> Diagnosis | None:
    """Right spans, but a text that is not the slice of the input between them."""
    try:
        rows, ref = _rows(got), _rows(want)
    except TypeError:
        return None
    text = case.args[3]
    if len(rows) == len(ref) and [r[:3] for r in rows] == [r[:3] for r in ref] and any(
            r[3] != text[r[1]:r[2]] for r in rows):
        return Diagnosis("text not sliced", "the text of an entity is the input's own characters "
                         "between its offsets, text[start:end]: don't rebuild it from the words "
                         "(the spaces between them are the text's, several or none).")
    return None


def _score_advice(got, want, case: Case) -> Diagnosis | None:
    """Everything right but the scores."""
    try:
        rows, ref = _rows(got), _rows(want)
    except TypeError:
        return None
    if len(rows) == len(ref) and rows and [r[:4] for r in rows] == [r[:4] for r in ref] and any(
            not isinstance(r[4], (int, float)) or abs(r[4] - w[4]) > 1e-6 for r, w in zip(rows, ref)):
        return Diagnosis("score", "the entities are right but their scores are not: an entity's "
                         "score is the MEAN of its words' scores (sum / number of words), as the "
                         "pipeline's aggregation_strategy='first' gives it.")
    return None


register(Exercise(
    key="serve_aggregate_spans",
    lesson=LESSON,
    reference=predict.aggregate_spans,
    cases=_cases,
    diagnosers=[_not_entities_advice, _last_entity_advice, _count_advice, _end_advice, _text_advice,
                _score_advice],
    library_name="lm.predict.aggregate_spans",
    mistakes=[
        Mistake("end taken from the first word", _end_of_first_word,
                "an entity ends where its LAST word ends: end = word_offsets[last][1], not the "
                "first word's end (a multi-word entity lost its tail)."),
        Mistake("score as the max", _score_max,
                "an entity's score is the MEAN of its words' scores, not the highest one: one sure "
                "word must not hide an unsure one."),
        Mistake("score of the first word", _score_first,
                "the first subword decides each WORD's tag; the entity's score is the MEAN over all "
                "its words, not the first word's score."),
        Mistake("stray I- dropped", _stray_i_dropped,
                "you dropped an I-X that follows O or another type (seqeval's strict mode). The "
                "course's policy (lm.ner.entity_spans, the pipeline) lets it start an entity."),
        Mistake("B- continues an entity", _b_continues,
                "B-X always starts a NEW entity, even right after an entity of type X: B-LOC B-LOC "
                "is two locations. Only I-X continues the open entity."),
        Mistake("text rebuilt by joining words", _joined_words,
                "slice the entity's text from the input, text[start:end]: joining the words with "
                "one space changes 'Hans   Peter' and turns 'U.S.' into 'U . S .'."),
        Mistake("word indices as offsets", _word_indices,
                "start and end are CHARACTER offsets into the text (from word_offsets), not word "
                "indices: a server's client highlights text[start:end]."),
    ],
))
