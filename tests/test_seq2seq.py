"""lmcourse.seq2seq against transformers' BART, torch's attention and datetime."""

import datetime as dt
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import BartConfig, BartForConditionalGeneration
from transformers.models.bart.modeling_bart import shift_tokens_right

import lmcourse as lm
from lmcourse import seq2seq as s2s
from lmcourse.exercises.lesson05c import _sources as lesson_sources
from lmcourse.exercises.lesson05c import make_seq2seq
from lmcourse.lm_math import IGNORE_INDEX

V = 37


@pytest.fixture(scope="module")
def hf_bart():
    """A small BART with random weights, 10x the default scale, every BART detail switched on:
    scaled embeddings, a final-logits bias, more decoder than encoder blocks."""
    lm.seed_everything(0)
    cfg = BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                     decoder_ffn_dim=48, max_position_embeddings=24, scale_embedding=True,
                     init_std=0.2, attn_implementation="eager")
    model = BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    return model


def _batch(seed=1, B=3, S=9, T=7):
    """Right-padded sources ending in </s>, and labels with -100 after the end of one target."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    am[1, 6:] = 0
    am[2, 2:] = 0
    src = src.masked_fill(am == 0, 1)
    labels = torch.randint(4, V, (B, T), generator=g)
    labels[0, 5:] = IGNORE_INDEX
    return src, am, labels


# --------------------------------------------------------------------------- equal to BART


def test_seq2seq_equals_bart(hf_bart):
    ours = s2s.seq2seq_from_hf(hf_bart)
    assert not ours.training and ours.cfg.decoder_layers == 3 and ours.cfg.scale_embedding
    src, am, labels = _batch()
    with torch.no_grad():
        want = hf_bart(input_ids=src, attention_mask=am, labels=labels)
        got = ours(src, am, labels=labels)
        torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=0)
        # the encoder's padding mask matters: without it the padded examples come out different
        assert (ours(src, None, labels=labels).logits - want.logits).abs().max() > 1e-3


def test_seq2seq_to_hf_round_trip(hf_bart):
    ours = s2s.seq2seq_from_hf(hf_bart)
    back = s2s.seq2seq_to_hf(ours).eval()
    want = hf_bart.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    assert back.lm_head.weight.data_ptr() == back.model.shared.weight.data_ptr()  # still tied
    src, am, labels = _batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=src, attention_mask=am, labels=labels).logits,
                                   ours(src, am, labels=labels).logits, atol=1e-5, rtol=0)


def test_course_model_to_bart_and_back():
    """A model made by the course (not by transformers) survives both conversions."""
    lm.seed_everything(3)
    cfg = s2s.Seq2SeqConfig(vocab_size=V, d_model=16, n_layers=1, n_decoder_layers=2, n_heads=2,
                            d_ff=24, max_positions=12)
    ours = s2s.Seq2Seq(cfg).eval()
    with torch.no_grad():
        ours.final_logits_bias.normal_()
    hf = s2s.seq2seq_to_hf(ours).eval()
    again = s2s.seq2seq_from_hf(hf)
    assert again.cfg == cfg
    src, am, labels = _batch(seed=4, S=8, T=6)
    with torch.no_grad():
        want = ours(src, am, labels=labels).logits
        torch.testing.assert_close(hf(input_ids=src, attention_mask=am, labels=labels).logits, want,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(again(src, am, labels=labels).logits, want, atol=1e-5, rtol=0)


def test_bart_position_offset_and_embedding_scale(hf_bart):
    ours = s2s.seq2seq_from_hf(hf_bart)
    assert ours.encoder.pos_emb.num_embeddings == hf_bart.config.max_position_embeddings + 2
    assert ours.embed_scale == pytest.approx(32 ** 0.5)
    with pytest.raises(ValueError, match="max_positions"):
        ours.encode(torch.full((1, 25), 5))


# --------------------------------------------------------------------------- cross-attention


def test_cross_attention_equals_torch_sdpa():
    lm.seed_everything(5)
    attn = s2s.CrossAttention(16, 4).eval()
    g = torch.Generator().manual_seed(6)
    x, memory = torch.randn(3, 4, 16, generator=g), torch.randn(3, 7, 16, generator=g)
    am = torch.ones(3, 7, dtype=torch.long)
    am[1, 3:] = 0
    am[2, 1:] = 0
    with torch.no_grad():
        q = attn.q_proj(x).view(3, 4, 4, 4).transpose(1, 2)       # (B, H, T, d_head)
        k = attn.k_proj(memory).view(3, 7, 4, 4).transpose(1, 2)  # (B, H, S, d_head)
        v = attn.v_proj(memory).view(3, 7, 4, 4).transpose(1, 2)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=am.bool()[:, None, None, :])
        want = attn.out_proj(ref.transpose(1, 2).reshape(3, 4, 16))
        got = s2s.cross_attention(x, memory, am, attn)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        # and nn.MultiheadAttention, given the same weights, with its key padding mask
        mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
        ours = s2s.CrossAttention.from_torch(mha)
        assert isinstance(ours, s2s.CrossAttention)
        ref2, _ = mha(x, memory, memory, key_padding_mask=am == 0)
        torch.testing.assert_close(s2s.cross_attention(x, memory, am, ours), ref2, atol=1e-6, rtol=1e-5)


def test_cross_attention_reads_the_whole_source_but_not_its_padding():
    lm.seed_everything(7)
    attn = s2s.CrossAttention(16, 4).eval()
    g = torch.Generator().manual_seed(8)
    x, memory = torch.randn(1, 3, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    am = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        base = s2s.cross_attention(x, memory, am, attn)
        padded = memory.clone()
        padded[:, 4] = 100.0  # the padded position: invisible
        torch.testing.assert_close(s2s.cross_attention(x, padded, am, attn), base)
        last = memory.clone()
        last[:, 3] = 3.0  # the last real source token: every target position sees it (not causal)
        assert (s2s.cross_attention(x, last, am, attn)[:, 0] - base[:, 0]).abs().max() > 1e-3


def test_decoder_is_causal_and_cross_weights_are_returned(hf_bart):
    ours = s2s.seq2seq_from_hf(hf_bart)
    src, am, _ = _batch()
    dec = torch.randint(4, V, (3, 6), generator=torch.Generator().manual_seed(9))
    changed = dec.clone()
    changed[:, 4:] = 5
    with torch.no_grad():
        memory = ours.encode(src, am)
        a, weights = ours.decode(dec, memory, am, return_cross_attentions=True)
        b = ours.decode(changed, memory, am)
    torch.testing.assert_close(a[:, :4], b[:, :4])  # later decoder tokens change nothing before them
    assert len(weights) == 3 and weights[0].shape == (3, 4, 6, 9)
    torch.testing.assert_close(weights[-1].sum(-1), torch.ones(3, 4, 6))
    assert weights[-1][2, :, :, 2:].abs().max() == 0  # example 2 has 2 real source tokens


# --------------------------------------------------------------------------- teacher forcing


def test_shift_right_equals_transformers():
    labels = torch.tensor([[5, 6, 7, 2, IGNORE_INDEX], [8, 9, 10, 11, 2]])
    got = s2s.shift_right(labels, 2, 1)
    assert got.tolist() == [[2, 5, 6, 7, 2], [2, 8, 9, 10, 11]]
    assert torch.equal(got, shift_tokens_right(labels, 1, 2))
    assert s2s.shift_right(torch.tensor([[4, IGNORE_INDEX, IGNORE_INDEX]]), 0, 0).tolist() == [[0, 4, 0]]
    assert labels[0, -1] == IGNORE_INDEX  # the labels are not changed in place


def test_collator_pads_sources_and_labels_separately():
    tok = s2s.CharTokenizer.from_texts(["ab", "abc"])
    ds = s2s.Seq2SeqDataset([s2s.Pair("abc", "a"), s2s.Pair("a", "cba")], tok)
    batch = s2s.Seq2SeqCollator(tok.pad_id)([ds[0], ds[1]])
    assert batch["input_ids"].tolist() == [tok.encode("abc"), tok.encode("a") + [1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [tok.encode("a") + [IGNORE_INDEX] * 2, tok.encode("cba")]


def test_char_tokenizer_specials_and_unknown():
    tok = s2s.CharTokenizer.from_texts(["2024-01-31", "March 2024"])
    assert tok.itos[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and tok.eos_id == 2
    ids = tok.encode("March 2024")
    assert ids[-1] == tok.eos_id and tok.decode(ids) == "March 2024"
    assert tok.decode(tok.encode("Mé")) == "M?"  # an unseen character becomes <unk>
    assert tok.decode([5, 6, tok.eos_id, 7]) == tok.decode([5, 6])  # stops at </s>


# --------------------------------------------------------------------------- the date task

PARSE = {  # strptime formats, written apart from the generator's own code
    "iso": "%Y-%m-%d", "day/month/year": "%d/%m/%Y", "day/month/yy": "%d/%m/%y",
    "day.month.year": "%d.%m.%Y", "compact": "%Y%m%d", "Month day, year": "%B %d, %Y",
    "day Month year": "%d %B %Y", "ordinal of Month": "%d of %B %Y", "Month ordinal": "%B %d, %Y",
    "weekday": "%A, %d %B %Y", "DD-MON-YYYY": "%d-%b-%Y", "mon d yy": "%b %d '%y",
    "year/month/day": "%Y/%m/%d", "day Mon year": "%d %b %Y",  # the unseen styles
}


def _parse(source: str, style: str) -> dt.date:
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", source) if "ordinal" in style else source
    parsed = dt.datetime.strptime(text, PARSE[style]).date()
    if style == "weekday":  # strptime does not check the weekday: compare it ourselves
        assert source.split(",")[0] == parsed.strftime("%A"), source
    return parsed


def test_date_splits_are_deterministic_and_disjoint():
    a, b = s2s.date_splits(300, 50, 60, seed=11), s2s.date_splits(300, 50, 60, seed=11)
    assert a == b
    assert s2s.date_splits(300, 50, 60, seed=12)["test"] != a["test"]
    assert [len(a[k]) for k in ("train", "validation", "test")] == [300, 50, 60]
    days = {k: {p.target for p in a[k]} for k in a}
    assert not days["train"] & days["test"] and not days["train"] & days["validation"]
    assert not days["validation"] & days["test"]
    assert {p.kind for p in a["test"]} == set(s2s.DATE_STYLES)  # every style tested, equally often
    assert len({sum(p.kind == s for p in a["test"]) for s in s2s.DATE_STYLES}) == 1


def test_date_labels_parse_back_to_the_same_day():
    splits = s2s.date_splits(600, 0, 240, seed=13)
    pairs = splits["train"] + splits["test"]
    assert set(PARSE) == set(s2s.DATE_STYLES) | set(s2s.UNSEEN_DATE_STYLES)
    days = [dt.date.fromisoformat(p.target) for p in splits["test"][:20]]
    pairs += [s2s.date_pair(d, style) for d in days for style in s2s.UNSEEN_DATE_STYLES]
    for p in pairs:
        day = dt.date.fromisoformat(p.target)
        assert s2s.FIRST_YEAR <= day.year <= s2s.LAST_YEAR
        assert _parse(p.source, p.kind) == day, p
    # every ordinal suffix is right, 11th-13th included
    assert [s2s.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"]


def test_translation_loader_falls_back_to_dates_offline(monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("LMCOURSE_DATA_DIR", raising=False)
    task = s2s.load_translation_pairs(40, 10)
    assert task.source == "offline" and "generated by lmcourse" in task.location
    assert len(task.splits["train"]) == 40 and len(task.splits["test"]) == 10
    assert "not a translation corpus" in capsys.readouterr().out


def test_translation_loader_online_reads_short_pairs(monkeypatch):
    import datasets

    rows = [{"en": "Hello.", "fr": "Bonjour."}, {"en": "A" * 80, "fr": "B"},
            {"en": "Yes.", "fr": "Oui."}, {"en": "Thanks!", "fr": "Merci !"}, {"en": "No.", "fr": "Non."}]
    calls = []

    def fake_load(path, name, split, cache_dir):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"translation": rows})

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "LMCOURSE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("LMCOURSE_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = s2s.load_translation_pairs(2, 2, max_chars=60, quiet=True)
    assert calls == [(s2s.TRANSLATION_HUB_ID, "en-fr", "train")] and task.source == "online"
    got = task.splits["train"] + task.splits["test"]
    assert sorted(p.source for p in got) == ["Hello.", "No.", "Thanks!", "Yes."]  # the long one left out
    assert all(p.kind == "en-fr" for p in got)


# --------------------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def bart_and_ours():
    """Lesson 05c's probe model (it writes varied tokens, and </s> at different steps) and the
    same weights in a BartForConditionalGeneration."""
    ours = make_seq2seq(2, eos_bias=2.0)
    return s2s.seq2seq_to_hf(ours).eval(), ours


def _sources(seed):
    return lesson_sources(seed, 4, 7, lengths=[7, 4, 6, 2])


def _generate(hf, src, am, **kw):
    out = hf.generate(input_ids=src, attention_mask=am, do_sample=False, max_new_tokens=8,
                      min_length=0, forced_eos_token_id=None, no_repeat_ngram_size=0, **kw)
    return out[:, 1:]  # without the decoder start token


def test_greedy_decode_equals_transformers_generate(bart_and_ours):
    hf, ours = bart_and_ours
    src, am = _sources(51)
    got = s2s.greedy_decode(ours, src, am, max_new_tokens=8)
    assert torch.equal(got, _generate(hf, src, am, num_beams=1))
    ended = (got == 2).any(1)
    assert ended.any() and not ended.all()  # the check covers rows that end and rows that don't


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_equals_transformers_generate(bart_and_ours, length_penalty):
    hf, ours = bart_and_ours
    src, am = _sources(51)
    got = s2s.beam_search(ours, src, am, num_beams=3, max_new_tokens=8, length_penalty=length_penalty)
    want = _generate(hf, src, am, num_beams=3, length_penalty=length_penalty, early_stopping=False)
    assert torch.equal(got, want)


def test_beam_of_one_is_greedy_and_scores_are_log_probs(bart_and_ours):
    _, ours = bart_and_ours
    src, am = _sources(54)
    greedy = s2s.greedy_decode(ours, src, am, max_new_tokens=8)
    assert torch.equal(s2s.beam_search(ours, src, am, num_beams=1, max_new_tokens=8), greedy)
    best, scores = s2s.beam_search(ours, src, am, num_beams=4, max_new_tokens=8, return_scores=True)
    with torch.no_grad():
        torch.testing.assert_close(s2s.sequence_log_probs(ours, src, am, best), scores, atol=1e-4, rtol=0)
        # a wider beam finds outputs at least as probable as greedy's here
        assert (scores >= s2s.sequence_log_probs(ours, src, am, greedy) - 1e-5).all()


class ScriptedModel(nn.Module):
    """A stand-in for Seq2Seq whose next-token log-probabilities depend only on the prefix,
    written out in a table: beam search's choices can be worked out by hand."""

    def __init__(self, table, vocab_size=6):
        super().__init__()
        self.cfg = s2s.Seq2SeqConfig(vocab_size=vocab_size)
        self.table, self.V = table, vocab_size
        self.dummy = nn.Parameter(torch.zeros(()))  # a parameter, for the device

    def encode(self, input_ids, attention_mask=None):
        return torch.zeros(input_ids.shape[0], 1, 1)

    def decode(self, ys, memory, attention_mask=None):
        rows = []
        for row in ys.tolist():
            probs = torch.full((self.V,), 1e-9)
            for tok, p in self.table.get(tuple(row[1:]), {4: 1.0}).items():
                probs[tok] = p
            rows.append(probs.log())
        return torch.stack(rows)[:, None, :].expand(-1, ys.shape[1], -1)  # (B, t, V)


# prefix (tokens after the start) -> next-token probabilities; 2 is </s>, 4 and 5 ordinary tokens
GREEDY_TRAP = {
    (): {4: 0.6, 5: 0.4},                 # greedy takes 4 ...
    (4,): {4: 0.36, 2: 0.34, 5: 0.3},     # ... and nothing after it is likely
    (4, 4): {5: 0.55, 2: 0.45}, (4, 4, 5): {2: 1.0}, (4, 5): {2: 1.0},
    (5,): {4: 0.95, 2: 0.05},             # 0.4 * 0.95 = 0.38 beats every sequence that starts with 4
    (5, 4): {2: 1.0},
}


def test_beam_search_beats_greedy_on_a_scripted_distribution():
    model = ScriptedModel(GREEDY_TRAP).eval()
    src = torch.ones(1, 3, dtype=torch.long)
    greedy = s2s.greedy_decode(model, src, None, max_new_tokens=6)
    assert greedy.tolist() == [[4, 4, 5, 2]]  # P = 0.6 * 0.36 * 0.55 = 0.119
    best, score = s2s.beam_search(model, src, None, num_beams=2, max_new_tokens=6, return_scores=True)
    assert best.tolist() == [[5, 4, 2]]  # P = 0.4 * 0.95 = 0.38
    assert score.item() == pytest.approx(torch.tensor(0.38).log().item(), abs=1e-5)
    # beam size 1 is greedy: </s> ranked second at step 2 ([4, </s>], P = 0.204, more than greedy's
    # 0.119) is not a hypothesis, as in transformers
    assert s2s.beam_search(model, src, None, num_beams=1, max_new_tokens=6).tolist() == [[4, 4, 5, 2]]


def test_exact_match():
    assert s2s.exact_match(["1998-03-03", "x"], ["1998-03-03", "y"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions but 1"):
        s2s.exact_match(["a", "b"], ["a"])


# --------------------------------------------------------------------------- training


def test_bart_initialisation_starts_from_a_uniform_guess():
    lm.seed_everything(15)
    cfg = s2s.Seq2SeqConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_positions=12)
    model = s2s.Seq2Seq(cfg).eval()
    src, am, labels = _batch(seed=16, S=8, T=6)
    with torch.no_grad():
        loss = model(src, am, labels=labels).loss.item()
    assert abs(loss - torch.tensor(float(V)).log().item()) < 0.05  # ln V: no token favoured yet
    assert model.tok_emb.weight[cfg.pad_token_id].abs().max() == 0  # <pad> starts at zero
    assert 0.015 < model.decoder.blocks[0].cross_attn.q_proj.weight.std() < 0.025  # N(0, 0.02^2)
    assert model.lm_head.weight is model.tok_emb.weight




def test_a_tiny_training_run_lowers_the_loss():
    splits = s2s.date_splits(640, 64, 0, seed=14)
    splits.pop("test")
    train_cfg = lm.train.TrainConfig(max_steps=40, batch_size=32, lr=3e-3, warmup_steps=4,
                                     eval_every=20, progress=False)
    model, tok, history = s2s.train_seq2seq(
        splits, dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, dropout=0.0), train_cfg, device="cpu")
    first = sum(r["loss"] for r in history.train[:5]) / 5
    last = sum(r["loss"] for r in history.train[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    assert history.eval[-1]["eval_loss"] < history.eval[0]["eval_loss"]
    assert not model.training and len(tok) == model.cfg.vocab_size
