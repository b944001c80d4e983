"""Checked exercises of lesson 05, part 1 (subword tokenization by hand, and causal-LM pretraining of a GPT)."""

from __future__ import annotations

import math

import torch

from lmcourse import pretraining, subword
from lmcourse.checker import Case, Diagnosis, Exercise, Mistake
from lmcourse.exercises import register

LESSON = "05_pretraining_gpt"
NEG_INF = -math.inf


def _logits(probs) -> torch.Tensor:
    """Logits whose softmax is `probs` (log-probabilities, up to a constant)."""
    return torch.tensor(probs, dtype=torch.float32).log()


# --------------------------------------------------------------------------- causal-LM targets


def _targets_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    return [
        Case("one sequence", (torch.tensor([10, 11, 12, 13, 14]),),
             hint="inputs are every token but the last, targets every token but the first."),
        Case("batch of sequences", (torch.randint(0, 50, (3, 7), generator=g),),
             hint="shift along the LAST dimension (time), never along the batch: ids[..., :-1]."),
        Case("two tokens", (torch.tensor([[4, 2]]),),
             hint="two tokens make one training pair: input [4], target [2]."),
        Case("repeated tokens", (torch.tensor([7, 7, 3, 7]),),
             hint="slice by position, not by value."),
    ]


def _targets_no_shift(ids):
    return ids, ids


def _targets_wrong_way(ids):
    return ids[..., 1:], ids[..., :-1]


def _targets_batch_dim(ids):
    return ids[:-1], ids[1:]


def _targets_roll(ids):
    return ids, torch.roll(ids, -1, dims=-1)


register(Exercise(
    key="causal_lm_targets",
    lesson=LESSON,
    reference=pretraining.causal_lm_targets,
    cases=_targets_cases,
    outputs=("inputs", "targets"),
    library_name="lm.pretraining.causal_lm_targets",
    mistakes=[
        Mistake("no shift", _targets_no_shift,
                "inputs and targets are the same tokens: the model would learn to copy its input, "
                "which the causal mask makes trivial. The target at position t is token t+1."),
        Mistake("shifted the wrong way", _targets_wrong_way,
                "your targets are the PREVIOUS tokens; a causal LM predicts the NEXT one: "
                "inputs ids[..., :-1], targets ids[..., 1:]."),
        Mistake("shifted along the batch", _targets_batch_dim,
                "ids[:-1] cuts the first dimension, which for a batch is the examples; shift along "
                "the last dimension (time) with ids[..., :-1] and ids[..., 1:]."),
        Mistake("rolled around", _targets_roll,
                "torch.roll wraps the first token around as the target of the last position: a "
                "pair that never occurs in the text. Slice instead; both results are one shorter."),
    ],
))


# --------------------------------------------------------------------------- what a filter keeps


def _kept_tokens(got, want, case: Case) -> Diagnosis | None:
    """A sampling filter keeps the most likely tokens of each row: which does the learner keep?"""
    logits = case.args[0]
    if not isinstance(got, torch.Tensor) or got.shape != logits.shape or not got.is_floating_point():
        return None
    kept_g, kept_w = got > NEG_INF, want > NEG_INF
    if torch.equal(kept_g, kept_w):
        return None
    removed = ~kept_w
    if removed.any() and torch.isfinite(got[removed]).all() and bool((got[removed] == got[removed][0]).all()):
        return None  # the right tokens, removed with a finite value: the generic -inf advice fits
    rows_l, rows_g, rows_w = (t.reshape(-1, logits.shape[-1]) for t in (logits, kept_g, kept_w))
    for r, (lg, kg) in enumerate(zip(rows_l, rows_g)):
        if kg.any() and (~kg).any() and lg[~kg].max() > lg[kg].min():
            where = f"in row {r} " if rows_l.shape[0] > 1 else ""
            return Diagnosis("not the most likely tokens", f"{where}you keep a token with logit "
                             f"{float(lg[kg].min()):.3g} but remove a more likely one with logit "
                             f"{float(lg[~kg].max()):.3g}: the kept tokens must be the most likely "
                             "ones of their own row. Sort each row (along the last dimension) in "
                             "descending order before you decide.")
    r = int((rows_g != rows_w).any(-1).nonzero()[0])
    n_g, n_w = int(rows_g[r].sum()), int(rows_w[r].sum())
    where = f" in row {r}" if rows_l.shape[0] > 1 else ""
    if n_g == 0:
        return Diagnosis("nothing kept", f"you remove every token{where}; the most likely token must "
                         "always stay.")
    return Diagnosis("kept too many" if n_g > n_w else "kept too few",
                     f"you keep {n_g} token{'s' if n_g != 1 else ''}{where} where {n_w} should stay.")


def _top_k_threshold(got, want, case: Case) -> Diagnosis | None:
    """Which value the learner's threshold is, counted from the largest."""
    d = _kept_tokens(got, want, case)
    if d is None or d.name not in ("kept too many", "kept too few"):
        return d
    logits, k = case.args
    V = logits.shape[-1]
    k = min(k, V)
    rows_l = logits.reshape(-1, V)
    rows_g = (got > NEG_INF).reshape(-1, V)
    r = int((rows_g != (want > NEG_INF).reshape(-1, V)).any(-1).nonzero()[0])
    desc = rows_l[r].sort(descending=True).values
    smallest_kept = rows_l[r][rows_g[r]].min()
    rank = int((desc > smallest_kept).sum()) + 1  # the learner's threshold is the rank-th largest
    note = (" (the k-th SMALLEST: sorted in ascending order)" if rank == V - k + 1 and rank != k
            else "")
    return Diagnosis(d.name, f"{d.advice} Your threshold is the {rank}-th largest logit{note}; it "
                     f"must be the k-th largest (k = {k}): torch.topk(logits, k).values[..., -1:], "
                     "or index k - 1 of the logits sorted in descending order. Keep everything >= it.")


# --------------------------------------------------------------------------- top-k filtering


def _topk_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    return [
        Case("k = 2", (torch.tensor([1.0, 3.0, -2.0, 2.5, 0.0]), 2),
             hint="keep the 2 largest logits as they are; every other one becomes -inf."),
        Case("batch of rows", (torch.randn(4, 10, generator=g), 3),
             hint="each row keeps its own k largest: topk along the last dimension."),
        Case("k = 1", (torch.tensor([[0.5, -1.0, 2.0, 1.9]]), 1),
             hint="k = 1 keeps only the largest logit (greedy's choice)."),
        Case("ties at the k-th value", (torch.tensor([4.0, 1.0, 3.0, 3.0, 0.0]), 2),
             hint="keep every logit >= the k-th largest value (a threshold), as transformers does: "
                  "tokens tied with the k-th one stay."),
        Case("ties around the k-th value", (torch.tensor([[2.0, 5.0, 2.0, 5.0, 1.0, 2.0]]), 3),
             hint="the 3rd largest value is 2, and three logits equal it: all of them stay, with "
                  "the two 5s (remove only what is strictly below the threshold)."),
        Case("all logits equal", (torch.tensor([[1.0, 1.0, 1.0, 1.0]]), 2),
             hint="every logit equals the k-th largest: nothing is strictly below it, so all stay."),
        Case("k larger than the vocabulary", (torch.tensor([0.1, 0.2, 0.3]), 10),
             hint="with k >= the vocabulary size nothing is removed: use min(k, logits.shape[-1])."),
        Case("negative logits", (torch.tensor([-5.0, -1.0, -3.0, -2.0]), 2),
             hint="the removed entries must be -inf, lower than any logit (0 is larger than these)."),
    ]


def _topk_smallest(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth, NEG_INF)


def _topk_off_by_one(logits, k):
    s = torch.sort(logits, dim=-1, descending=True).values
    kth = s[..., min(k, logits.shape[-1] - 1):][..., :1]  # the (k+1)-th largest
    return logits.masked_fill(logits < kth, NEG_INF)


def _topk_zero(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, 0.0)


def _topk_exactly_k(logits, k):
    k = min(k, logits.shape[-1])
    idx = torch.topk(logits, k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)
    return logits.masked_fill(~keep, NEG_INF)


def _topk_removes_kth(logits, k):
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits <= kth, NEG_INF)


def _topk_no_clamp(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def _topk_global(logits, k):
    kth = torch.topk(logits.flatten(), min(k, logits.numel())).values[-1]
    return logits.masked_fill(logits < kth, NEG_INF)


register(Exercise(
    key="top_k_filter",
    lesson=LESSON,
    reference=pretraining.top_k_filter,
    cases=_topk_cases,
    diagnosers=[_top_k_threshold],
    library_name="lm.pretraining.top_k_filter",
    mistakes=[
        Mistake("keeps the k smallest", _topk_smallest,
                "you keep the k LEAST likely tokens; keep the k largest logits (torch.topk's default "
                "largest=True) and remove what is below the k-th largest."),
        Mistake("off by one (k + 1 kept)", _topk_off_by_one,
                "you keep k + 1 tokens: the k-th largest value is at index k - 1 of the sorted "
                "logits (topk(...).values[..., -1])."),
        Mistake("0 instead of -inf", _topk_zero,
                "a removed logit must be -inf so that softmax gives it probability exp(-inf) = 0; a "
                "logit of 0 still has probability, and can even beat negative kept logits."),
        Mistake("exactly k, ties dropped", _topk_exactly_k,
                "scattering topk's indices keeps exactly k tokens and drops an arbitrary one of a "
                "tie; compare with the k-th largest value instead (logits < kth -> -inf), so tied "
                "tokens are treated alike."),
        Mistake("k-th removed too (<= instead of <)", _topk_removes_kth,
                "you remove the k-th largest logit itself (and every one tied with it): remove only "
                "what is strictly below it, logits < kth, so that k tokens (or more, with ties) stay."),
        Mistake("k not clamped", _topk_no_clamp,
                "torch.topk fails when k is larger than the vocabulary; use k = min(k, "
                "logits.shape[-1]) (asking for more tokens than exist keeps them all)."),
        Mistake("one threshold for the whole batch", _topk_global,
                "you take the k largest of the whole tensor; each row (each sequence in the batch) "
                "keeps its own k largest: topk along dim=-1."),
    ],
))


# --------------------------------------------------------------------------- top-p (nucleus) filtering


def _topp_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    # probabilities 0.5, 0.2, 0.15, 0.1, 0.05 in a shuffled order
    dist = _logits([0.1, 0.5, 0.05, 0.2, 0.15])
    return [
        Case("p = 0.6", (dist, 0.6),
             hint="0.5 alone is not enough; 0.5 + 0.2 = 0.7 >= 0.6: keep those two tokens. The token "
                  "that crosses p belongs to the nucleus."),
        Case("p = 0.9", (dist, 0.9),
             hint="0.5 + 0.2 + 0.15 = 0.85 < 0.9, adding 0.1 gives 0.95: keep four tokens."),
        Case("p below the top probability", (dist, 0.3),
             hint="the most likely token alone already reaches p: keep just it (never remove all)."),
        Case("p = 1", (dist, 1.0), hint="p = 1 keeps every token."),
        Case("mass reaches p exactly", (torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, NEG_INF, NEG_INF]]), 0.5),
             hint="row 0: four tokens of 0.25 each; the first two add up to exactly 0.5 = p, so the "
                  "nucleus is complete with two (drop a token once the ones BEFORE it reach p: "
                  "before >= p). Row 1: 0.5 alone reaches p. Tied tokens are interchangeable.",
             canonical=lambda out: torch.as_tensor(out).sort(dim=-1, descending=True).values),
        Case("batch of rows", (torch.randn(3, 8, generator=g) * 2, 0.75),
             hint="each row gets its own sort, cumulative sum and nucleus, along the last dimension."),
        Case("shifted logits", (_logits([0.3, 0.45, 0.25]) + 1000.0, 0.7),
             hint="the cumulative sum is over PROBABILITIES (softmax of the logits), not the logits; "
                  "here the logits are near 1000 but the probabilities are 0.45, 0.3, 0.25."),
        Case("3-D logits (B x T x V)", (torch.randn(2, 3, 6, generator=g), 0.5),
             hint="work along the last dimension, whatever the leading dimensions."),
    ]


def _topp_excludes_crossing(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(s, -1).cumsum(-1)
    drop = cum > p
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_excludes_crossing_and_top(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(s, -1).cumsum(-1)
    drop = cum > p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_strict_before(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs > p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_cum_at_least(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    drop = torch.softmax(s, -1).cumsum(-1) >= p
    drop[..., 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_ascending(logits, p):
    s, order = torch.sort(logits, dim=-1)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_logits_cumsum(logits, p):
    s, order = torch.sort(logits, dim=-1, descending=True)
    drop = s.cumsum(-1) - s >= p
    return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


def _topp_not_unsorted(logits, p):
    s, _ = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return logits.masked_fill(drop, NEG_INF)


def _topp_returns_sorted(logits, p):
    s, _ = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(s, -1)
    drop = probs.cumsum(-1) - probs >= p
    return s.masked_fill(drop, NEG_INF)


register(Exercise(
    key="top_p_filter",
    lesson=LESSON,
    reference=pretraining.top_p_filter,
    cases=_topp_cases,
    diagnosers=[_kept_tokens],
    library_name="lm.pretraining.top_p_filter",
    mistakes=[
        Mistake("excludes the token that crosses p", _topp_excludes_crossing,
                "you keep only tokens whose cumulative probability is <= p, so the kept set adds up "
                "to LESS than p; the nucleus is the smallest set that reaches p, so the token that "
                "crosses p stays. Drop a token when the tokens BEFORE it already reach p: "
                "cumsum - probs >= p."),
        Mistake("removes everything when p is small", _topp_excludes_crossing_and_top,
                "with cumsum > p every token is removed when the top token alone exceeds p (all "
                "-inf, softmax gives nan); the most likely token must always stay. Compare what "
                "comes BEFORE each token: cumsum - probs >= p."),
        Mistake("one too many at exactly p (> instead of >=)", _topp_strict_before,
                "when the tokens before one add up to exactly p, the nucleus is already complete: "
                "drop that token too. Compare with >=: cumsum - probs >= p, not > p."),
        Mistake("drops the token that reaches p exactly (cumsum >= p)", _topp_cum_at_least,
                "the token whose cumulative probability reaches exactly p belongs to the nucleus "
                "(it is what makes the mass reach p); decide on the mass BEFORE each token: drop "
                "when cumsum - probs >= p."),
        Mistake("sorted ascending", _topp_ascending,
                "you accumulate from the least likely token; the nucleus is built from the MOST "
                "likely ones: sort with descending=True."),
        Mistake("cumulative sum of logits", _topp_logits_cumsum,
                "logits are not probabilities (they can be negative or 1000); apply softmax to the "
                "sorted logits before the cumulative sum."),
        Mistake("mask left in sorted order", _topp_not_unsorted,
                "your mask is in SORTED order but you apply it to the unsorted logits; put it back "
                "in the original order first: mask.scatter(-1, sorted_indices, mask)."),
        Mistake("returns the sorted logits", _topp_returns_sorted,
                "you return the logits in sorted order, so token ids no longer match positions; "
                "return the original logits with the removed ones set to -inf."),
    ],
))


# --------------------------------------------------------------------------- BPE: learning merges


def _is_pairs(x) -> bool:
    return isinstance(x, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in x)


def _is_tokens(x) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x)


def _splits_after(counts: dict[str, int], merges) -> dict[tuple[str, ...], int]:
    """The words split into symbols after `merges`, with their counts."""
    splits: dict[tuple[str, ...], int] = {}
    for w, n in counts.items():
        syms = list(w)
        for pair in merges:
            syms = subword.merge_pair(syms, tuple(pair))
        splits[tuple(syms)] = splits.get(tuple(syms), 0) + n
    return splits


def _best(counts: dict, rank: dict[str, int]):
    return min(counts, key=lambda p: (-counts[p], rank.get(p[0], 1 << 30), rank.get(p[1], 1 << 30)))


def _bpe_learn_advice(got, want, case: Case) -> Diagnosis | None:
    """At the first merge that differs: how often each pair occurs then, and which count or tie
    rule the learner's choice fits."""
    if got == want:
        return None
    if _is_tokens(got) and got and not _is_pairs(got):
        return Diagnosis("bpe merges", "return the merges as pairs (left, right), e.g. ('e', 's'), "
                         "not the merged strings ('es'): encoding needs to know which two symbols "
                         "to fuse.")
    if not _is_pairs(got):
        return None
    counts = dict(case.args[0])
    got = [tuple(p) for p in got]
    want = [tuple(p) for p in want]
    i = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    if i == len(got):
        return Diagnosis("bpe merges", f"you stop after {len(got)} merges, but {len(want)} are "
                         "possible: go on until you have num_merges merges, and stop early only "
                         "when no word has two symbols left.")
    if i == len(want):
        return Diagnosis("bpe merges", f"you return {len(got)} merges, expected {len(want)}: stop "
                         "after num_merges merges, and as soon as no pair is left (every word one "
                         "symbol).")
    g, w = got[i], want[i]
    splits = _splits_after(counts, want[:i])
    pairs = subword.pair_counts(splits)
    step = f"merge {i + 1}: you chose {g}, expected {w}"
    if g not in pairs:
        return Diagnosis("bpe merges", f"{step}, but after the earlier merges no word holds "
                         f"{g[0]!r} followed by {g[1]!r}. Count pairs inside each word only (never "
                         "across two words), on the symbols the earlier merges left, and recount "
                         "after every merge.")
    if pairs[g] == pairs[w]:
        return Diagnosis("bpe merges", f"{step}: both occur {pairs[w]} times, a tie. Break ties "
                         "by age: the pair whose left symbol is older wins, then the older right "
                         "symbol; characters are older than merged symbols and ordered by code "
                         "point, merged symbols by when they were made (not alphabetically, not "
                         "by which pair you saw first).")
    if pairs[g] > pairs[w]:
        return Diagnosis("bpe merges", f"{step}: {g} occurs {pairs[g]} times and {w} "
                         f"{pairs[w]} times, so yours was the right choice here; the earlier "
                         "merges must have left other symbols. Fuse every occurrence of a merged "
                         "pair, left to right.")
    rank = subword.initial_ranks(counts)
    for a, b in want[:i]:
        rank.setdefault(a + b, len(rank))
    unweighted = subword.pair_counts({s: 1 for s in splits})
    if _best(unweighted, rank) == g:
        return Diagnosis("bpe merges", f"{step}: {g} occurs in more distinct words, but {w} "
                         f"occurs {pairs[w]} times against {pairs[g]} once each word counts as "
                         "often as it occurs: add the word's count, not 1, for each pair in it.")
    once = {}
    for syms, n in splits.items():
        j = 0
        while j + 1 < len(syms):
            once[syms[j], syms[j + 1]] = once.get((syms[j], syms[j + 1]), 0) + n
            j += 2 if syms[j] == syms[j + 1] else 1
    if _best(once, rank) == g:
        return Diagnosis("bpe merges", f"{step}: {w} occurs {pairs[w]} times when every "
                         "position counts: 'aaa' holds the pair ('a', 'a') twice (positions 0 and "
                         "1), although one merge uses up both. Count every neighbouring position.")
    return Diagnosis("bpe merges", f"{step}: after the earlier merges {w} occurs {pairs[w]} times "
                     f"and {g} {pairs[g]} times. Take the most frequent pair, weighting each word "
                     "by its count, and recount after every merge.")


def _bpe_learn_cases() -> list[Case]:
    return [
        Case("tie between two pairs of characters", ({"zy": 2, "ab": 2}, 2),
             hint="('z', 'y') and ('a', 'b') both occur twice; the tie goes to the smaller "
                  "characters (code point order): ('a', 'b') first, although 'zy' comes first."),
        Case("tie between a merged symbol and characters", ({"aba": 2, "xy": 2}, 3),
             hint="after ('a', 'b'), the pairs ('ab', 'a') and ('x', 'y') tie at 2; merged symbols "
                  "are younger than every character, so ('x', 'y') goes first, although 'ab' < 'x' "
                  "alphabetically."),
        Case("overlapping pairs (aaa)", ({"aaa": 2, "bc": 3}, 2),
             hint="'aaa' holds the pair ('a', 'a') at positions 0 and 1: 2 x 2 = 4 occurrences, "
                  "more than ('b', 'c')'s 3. Count every position, as tokenizers does."),
        Case("aaaa merges left to right", ({"aaaa": 1}, 5),
             hint="'a a a a' becomes 'aa aa' (scan left to right: a fused pair is used up), then "
                  "'aaaa'; no pair is left after 2 merges, so stop there."),
        Case("words weighted by their counts", ({"xy": 3, "ab": 1, "abc": 1}, 1),
             hint="('a', 'b') is in two words, but ('x', 'y') occurs 3 times: each word adds its "
                  "count to every pair in it."),
        Case("pairs never cross words", ({"a": 5, "b": 5, "cd": 1}, 3),
             hint="'a' and 'b' are words of one character: they hold no pair. The only pair is "
                  "('c', 'd'); after it nothing is left, so one merge only."),
        Case("a pair twice in one word", ({"abab": 2}, 3),
             hint="fuse EVERY occurrence of the pair: 'a b a b' -> 'ab ab' -> 'abab': two merges."),
        Case("no merges asked", ({"low": 5, "lower": 2}, 0), hint="num_merges = 0: no merges, []."),
        Case("words of one character", ({"a": 3, "b": 1}, 2),
             hint="no word has two symbols: there is nothing to merge, []."),
        Case("Sennrich's toy corpus", (dict(subword.TOY_WORD_COUNTS), 10),
             hint="first ('e', 's') (9 times, tied with ('s', 't'): 'e' is the older left symbol), "
                  "then ('es', 't'), ('l', 'o'), ('lo', 'w'), ..."),
        Case("a sentence", (dict(subword.word_counts("the cat sat on the mat and the cat ate the hat")), 4),
             hint="count the words first: 'the' 4 times, 'cat' twice, ...; then merge as above: "
                  "('a', 't'), ('h', 'e'), ('t', 'he'), ('c', 'at')."),
    ]


def _learn_with(count_pairs, pick):
    """A learner's loop with its own pair counting and its own choice."""
    def learn(word_counts, num_merges):
        splits = {w: list(w) for w in word_counts}
        rank = subword.initial_ranks(word_counts)
        merges = []
        while len(merges) < num_merges:
            counts = count_pairs(splits, word_counts)
            if not counts:
                break
            best = pick(counts, rank)
            merges.append(best)
            rank.setdefault(best[0] + best[1], len(rank))
            splits = {w: subword.merge_pair(s, best) for w, s in splits.items()}
        return merges
    return learn


def _count_weighted(splits, word_counts):
    out = {}
    for w, s in splits.items():
        for p in zip(s, s[1:]):
            out[p] = out.get(p, 0) + word_counts[w]
    return out


def _count_unweighted(splits, word_counts):
    return _count_weighted(splits, dict.fromkeys(word_counts, 1))


def _count_non_overlapping(splits, word_counts):
    out = {}
    for w, s in splits.items():
        i = 0
        while i + 1 < len(s):
            out[s[i], s[i + 1]] = out.get((s[i], s[i + 1]), 0) + word_counts[w]
            i += 2 if s[i] == s[i + 1] else 1
    return out


def _count_across_words(splits, word_counts):
    stream = [c for w, s in splits.items() for c in s * word_counts[w]]
    out = {}
    for p in zip(stream, stream[1:]):
        out[p] = out.get(p, 0) + 1
    return out


def _pick_by_age(counts, rank):
    return _best(counts, rank)


def _pick_first_seen(counts, rank):
    return max(counts, key=counts.get)  # the first pair with the top count, in insertion order


def _pick_alphabetical(counts, rank):
    return min(counts, key=lambda p: (-counts[p], p))


def _learn_first_occurrence_only(word_counts, num_merges):
    splits = {w: list(w) for w in word_counts}
    rank = subword.initial_ranks(word_counts)
    merges = []
    while len(merges) < num_merges:
        counts = _count_weighted(splits, word_counts)
        if not counts:
            break
        best = _best(counts, rank)
        merges.append(best)
        rank.setdefault(best[0] + best[1], len(rank))
        for w, s in splits.items():
            for i in range(len(s) - 1):
                if (s[i], s[i + 1]) == best:
                    splits[w] = s[:i] + [s[i] + s[i + 1]] + s[i + 2:]
                    break
    return merges


register(Exercise(
    key="bpe_learn_merges",
    lesson=LESSON,
    reference=subword.bpe_learn,
    cases=_bpe_learn_cases,
    diagnosers=[_bpe_learn_advice],
    library_name="lm.subword.bpe_learn",
    mistakes=[
        Mistake("ties to the first pair seen", _learn_with(_count_weighted, _pick_first_seen),
                "a tie between equally frequent pairs went to the pair you counted first "
                "(max() or Counter.most_common keep the first): break ties by age, the older left "
                "symbol first, then the older right symbol, characters before merged symbols."),
        Mistake("ties broken alphabetically", _learn_with(_count_weighted, _pick_alphabetical),
                "ties broken by comparing the strings: a merged symbol such as 'ab' is YOUNGER "
                "than every character, so ('x', 'y') beats ('ab', 'a'). Give each symbol a rank: "
                "characters in code-point order, then each merged symbol as it is made."),
        Mistake("not weighted by word counts", _learn_with(_count_unweighted, _pick_by_age),
                "each pair counts once per distinct word; a word that occurs 6 times has its "
                "pairs 6 times: add word_counts[word] for every pair of the word."),
        Mistake("overlapping pairs counted once", _learn_with(_count_non_overlapping, _pick_by_age),
                "you count 'aaa' as holding ('a', 'a') once; tokenizers counts every position "
                "(twice), although a merge can use only one of them: count zip(symbols, "
                "symbols[1:])."),
        Mistake("pairs across word boundaries", _learn_with(_count_across_words, _pick_by_age),
                "you count pairs across the end of one word and the start of the next: BPE never "
                "merges across words. Count the pairs of each word on its own."),
        Mistake("only the first occurrence merged", _learn_first_occurrence_only,
                "a merge must fuse EVERY occurrence of the pair in every word ('a b a b' -> "
                "'ab ab'), scanning left to right; you fuse only the first one."),
    ],
))


# --------------------------------------------------------------------------- BPE: encoding a word


def _bpe_encode_advice(got, want, case: Case) -> Diagnosis | None:
    """What is wrong with the tokens of one word: spelling, a token no merge makes, merges left
    out, or merges applied in the wrong order."""
    if got == want:
        return None
    if isinstance(got, str):
        return Diagnosis("bpe tokens", "you return one string; return the list of tokens, e.g. "
                         "['low', 'est'] (a token may hold several characters).")
    if not _is_tokens(got):
        return None
    word, merges = case.args
    got = list(got)
    if "".join(got) != word:
        return Diagnosis("bpe tokens", f"your tokens spell {''.join(got)!r}, not {word!r}: every "
                         "character of the word must end up in exactly one token, in order.")
    makeable = set(word) | {a + b for a, b in merges}
    odd = [t for t in got if t not in makeable]
    if odd:
        return Diagnosis("bpe tokens", f"{odd[0]!r} is not a token: no merge makes it. Fuse only "
                         "two whole neighbouring symbols (a string replace of 'a b' in 'ca b' also "
                         "matches inside the longer symbol 'ca').")
    if len(got) > len(want):
        return Diagnosis("bpe tokens", f"{len(got)} tokens where {len(want)} are expected: some "
                         "merges were not applied. Apply every merge, in the order learned, to "
                         "EVERY occurrence of its pair in the symbols the earlier merges left.")
    if len(got) < len(want):
        return Diagnosis("bpe tokens", f"{len(got)} tokens where {len(want)} are expected: you fuse "
                         "more than replaying the merges does. Being a token is not enough: only "
                         "the merges, applied one after the other in the order learned, decide.")
    return Diagnosis("bpe tokens", "the merges were applied in the wrong order: replay them in the "
                     "order they were learned (an earlier merge first, wherever its pair is), and "
                     "for overlapping occurrences ('a a a') fuse the leftmost first.")


def _bpe_encode_cases() -> list[Case]:
    toy = subword.bpe_learn(subword.TOY_WORD_COUNTS, 10)
    return [
        Case("a word of the corpus", ("lowest", toy),
             hint="replay the merges in order: ... ('l', 'o'), ('lo', 'w') make 'low', and "
                  "('e', 's'), ('es', 't') make 'est'."),
        Case("a new word", ("newer", toy),
             hint="'n' + 'ew' -> 'new'; no merge fuses 'e' and 'r', so they stay single."),
        Case("the earlier merge wins", ("abc", [("b", "c"), ("a", "b")]),
             hint="('b', 'c') was learned first, so it applies first: 'a bc'; ('a', 'b') then finds "
                  "no 'a' followed by 'b'. Not the leftmost pair: the earliest-learned one."),
        Case("overlapping pair (aaa)", ("aaa", [("a", "a")]),
             hint="scan left to right: 'aa a', not 'a aa'."),
        Case("aaaa", ("aaaa", [("a", "a"), ("aa", "aa")]),
             hint="'a a a a' -> 'aa aa' -> 'aaaa'."),
        Case("every occurrence", ("abab", [("a", "b")]), hint="both 'a b' become 'ab': 'ab ab'."),
        Case("whole symbols only", ("cab", [("c", "a"), ("a", "b")]),
             hint="after ('c', 'a') the symbols are 'ca b'; the 'a' inside 'ca' is not a symbol of "
                  "its own, so ('a', 'b') does not apply."),
        Case("a merged token is not always reachable", ("abc", [("a", "b"), ("b", "c"), ("a", "bc")]),
             hint="('a', 'b') comes first: 'ab c'; then no 'b' is left for ('b', 'c'), so 'abc' is "
                  "never made, although it is a token: ['ab', 'c']."),
        Case("unknown characters", ("xyz", toy), hint="no merge involves x, y or z: ['x', 'y', 'z']."),
        Case("single character", ("w", toy), hint="one character is one token: ['w']."),
        Case("empty word", ("", toy), hint="no characters, no tokens: []."),
        Case("no merges", ("low", []), hint="without merges a word is its characters."),
    ]


def _encode_leftmost_known_pair(word, merges):
    symbols, known = list(word), {tuple(m) for m in merges}
    while True:
        i = next((i for i, p in enumerate(zip(symbols, symbols[1:])) if p in known), None)
        if i is None:
            return symbols
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]


def _encode_right_to_left(word, merges):
    symbols = list(word)
    for a, b in merges:
        i = len(symbols) - 2
        while i >= 0:
            if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                symbols[i:i + 2] = [a + b]
                i -= 2
            else:
                i -= 1
    return symbols


def _encode_string_replace(word, merges):
    text = " ".join(word)
    for a, b in merges:
        text = text.replace(f"{a} {b}", a + b)
    return text.split(" ") if text else []


def _encode_first_occurrence(word, merges):
    symbols = list(word)
    for a, b in merges:
        for i in range(len(symbols) - 1):
            if symbols[i] == a and symbols[i + 1] == b:
                symbols[i:i + 2] = [a + b]
                break
    return symbols


register(Exercise(
    key="bpe_encode_word",
    lesson=LESSON,
    reference=subword.bpe_encode,
    cases=_bpe_encode_cases,
    diagnosers=[_bpe_encode_advice],
    library_name="lm.subword.bpe_encode",
    mistakes=[
        Mistake("leftmost known pair first", _encode_leftmost_known_pair,
                "you fuse the leftmost pair that is any merge; BPE applies the merges in the ORDER "
                "LEARNED: loop over the merges, and apply each to the whole word before the next."),
        Mistake("overlaps fused from the right", _encode_right_to_left,
                "you scan from the right, so 'a a a' becomes 'a aa'; scan from the left: 'aa a' "
                "(as training fused them)."),
        Mistake("string replace across symbols", _encode_string_replace,
                "replacing 'a b' in the space-joined string also matches the end of a longer "
                "symbol ('ca b' -> 'cab'): compare whole symbols, symbols[i] == a and "
                "symbols[i + 1] == b."),
        Mistake("only the first occurrence", _encode_first_occurrence,
                "each merge applies to EVERY occurrence of its pair in the word, left to right, "
                "not only the first one ('a b a b' -> 'ab ab')."),
    ],
))


# --------------------------------------------------------------------------- WordPiece: encoding a word


WP_VOCAB = frozenset({
    "[UNK]", "l", "lo", "low", "n", "ne", "new", "w", "wi", "a", "x",
    "##e", "##s", "##t", "##st", "##est", "##west", "##er", "##r", "##w", "##o", "##i", "##d", "##a",
})


def _wp_options(case: Case) -> tuple[str, str, int]:
    kw = case.kwargs
    return kw.get("unk", subword.UNK), kw.get("prefix", subword.CONTINUATION), \
        kw.get("max_chars", subword.MAX_WORD_CHARS)


def _wordpiece_advice(got, want, case: Case) -> Diagnosis | None:
    """Which rule of greedy longest match the learner's tokens break."""
    if got == want:
        return None
    if isinstance(got, str):
        return Diagnosis("wordpiece tokens", "you return one string; return the list of pieces, "
                         "e.g. ['new', '##er'].")
    if not _is_tokens(got):
        return None
    word, vocab = case.args[0], case.args[1]
    unk, prefix, max_chars = _wp_options(case)
    got = list(got)
    if not word:
        return Diagnosis("wordpiece tokens", "an empty word has no pieces: return [] (the loop "
                         "over start positions never runs).")
    if want == [unk] and len(word) > max_chars:
        return Diagnosis("wordpiece tokens", f"the word has {len(word)} characters, more than "
                         f"max_chars = {max_chars}: return [unk] at once, before any matching.")
    if want == [unk]:
        if unk in got or not got:
            return Diagnosis("wordpiece tokens", "when some part of the word matches no piece, the "
                             "WHOLE word becomes one unk token: return [unk], dropping the pieces "
                             "found before.")
        return Diagnosis("wordpiece tokens", "no split of this word into vocabulary pieces exists "
                         "(the first piece is looked up as it is, every later one with the prefix): "
                         "return [unk].")
    if got == [unk] and len(word) == max_chars:
        return Diagnosis("wordpiece tokens", f"the word has exactly max_chars = {max_chars} "
                         "characters: only LONGER words (len(word) > max_chars) become unk.")
    if unk in got:
        return Diagnosis("wordpiece tokens", "this word splits into vocabulary pieces: look the "
                         "first piece up as it is, and every later piece as prefix + piece.")
    bodies = [t[len(prefix):] if i and t.startswith(prefix) else t for i, t in enumerate(got)]
    if "".join(bodies) != word:
        return Diagnosis("wordpiece tokens", f"your pieces (without the {prefix!r} prefix) spell "
                         f"{''.join(bodies)!r}, not {word!r}: each piece continues where the "
                         "last one ended.")
    if any(not t.startswith(prefix) for t in got[1:]):
        return Diagnosis("wordpiece tokens", f"pieces after the first carry the prefix {prefix!r} "
                         f"(look them up and return them as {prefix!r} + piece); the first never does.")
    if all(t in vocab for t in got) and len(got[-1]) > len(want[-1]):
        return Diagnosis("wordpiece tokens", f"your last piece {got[-1]!r} is longer than "
                         f"{want[-1]!r}: you matched from the end of the word. Match from the "
                         "LEFT: the longest piece that starts the word, then the longest that "
                         "starts where it ended, and so on.")
    i = next(i for i, (g, w) in enumerate(zip(got + [""], want + [""])) if g != w)
    if i < len(got) and i < len(want) and len(got[i]) < len(want[i]):
        return Diagnosis("wordpiece tokens", f"piece {i + 1}: {got[i]!r} where the longer "
                         f"{want[i]!r} is in the vocabulary: take the LONGEST piece first (try "
                         "the end of the word, then one character shorter, ...).")
    return Diagnosis("wordpiece tokens", "match from the LEFT: the longest vocabulary piece that "
                     "starts the word, then the longest that starts where it ended, and so on.")


def _wordpiece_cases() -> list[Case]:
    v = WP_VOCAB
    return [
        Case("longest match first", ("lowest", v),
             hint="'low' is the longest vocabulary piece that starts 'lowest' (not 'l' or 'lo'); "
                  "then '##est', the longest piece for 'est'."),
        Case("from the left", ("newest", v),
             hint="the longest piece that STARTS the word comes first: 'new', then '##est' (not "
                  "'ne' + '##west', which a search from the end would find)."),
        Case("continuation pieces carry ##", ("newer", v),
             hint="'new', then 'er' looked up as '##er': ['new', '##er']."),
        Case("several pieces", ("widest", v),
             hint="'wi' (longest start), '##d', then '##est' (longer than '##e' or '##es')."),
        Case("unknown character at the end", ("lowq", v),
             hint="no piece covers 'q': the WHOLE word becomes ['[UNK]'], not ['low', '[UNK]']."),
        Case("unknown character inside", ("lowqer", v),
             hint="one unknown character anywhere makes the whole word ['[UNK]']."),
        Case("a word cannot start with a ## piece", ("est", v),
             hint="'##est' is in the vocabulary but 'e' alone is not, and the first piece is "
                  "looked up without ##: ['[UNK]']."),
        Case("single character", ("a", v), hint="one character in the vocabulary: ['a']."),
        Case("empty word", ("", v), hint="an empty word has no pieces: []."),
        Case("longer than max_chars", ("a" * 12, v), {"max_chars": 10},
             hint="12 characters > max_chars = 10: ['[UNK]'] without looking further."),
        Case("exactly max_chars", ("a" * 10, v), {"max_chars": 10},
             hint="10 characters is not more than max_chars = 10: split it, 'a' then nine '##a'."),
        Case("another prefix and unk", ("newest", frozenset({"new", "@@est", "<unk>"}), ),
             {"prefix": "@@", "unk": "<unk>"},
             hint="use the prefix and unk you are given: ['new', '@@est']."),
    ]


def _wp_shortest(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    out, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            return [unk]
    return out


def _wp_no_prefix(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            if word[start:end] in vocab:
                out.append(word[start:end])
                start = end
                break
        else:
            return [unk]
    return out


def _wp_partial(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            return out + [unk]
    return out


def _wp_unk_per_char(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    out, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else prefix + word[start:end]
            if piece in vocab:
                out.append(piece)
                start = end
                break
        else:
            out.append(unk)
            start += 1
    return out


def _wp_at_max_chars(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    if len(word) >= max_chars:
        return [unk]
    return subword.wordpiece_encode(word, vocab, unk, prefix, max_chars)


def _wp_fixed_prefix(word, vocab, unk="[UNK]", prefix="##", max_chars=100):
    return subword.wordpiece_encode(word, vocab, "[UNK]", "##", max_chars)


register(Exercise(
    key="wordpiece_encode_word",
    lesson=LESSON,
    reference=subword.wordpiece_encode,
    cases=_wordpiece_cases,
    diagnosers=[_wordpiece_advice],
    library_name="lm.subword.wordpiece_encode",
    mistakes=[
        Mistake("shortest match", _wp_shortest,
                "you take the SHORTEST piece that matches ('l' instead of 'low'); WordPiece takes "
                "the longest: try end = len(word) first, then shorter."),
        Mistake("## forgotten on continuations", _wp_no_prefix,
                "pieces after the first must be looked up (and returned) with the prefix: "
                "'##er', not 'er'. Only the first piece of a word goes without it."),
        Mistake("partial pieces kept before [UNK]", _wp_partial,
                "when no piece fits, the whole word is unknown: return [unk] alone, not the "
                "pieces found so far followed by [unk]."),
        Mistake("[UNK] per unknown character", _wp_unk_per_char,
                "one unmatched character makes the WHOLE word [unk] (BERT's rule); you replace "
                "only that character and go on."),
        Mistake("max_chars itself counted as too long", _wp_at_max_chars,
                "a word of exactly max_chars characters is still split; only longer ones "
                "(len(word) > max_chars) become [unk]."),
        Mistake("prefix and unk arguments ignored", _wp_fixed_prefix,
                "use the `prefix` and `unk` arguments you are given instead of '##' and '[UNK]' "
                "written in."),
    ],
))
