"""The bag-of-words baseline of the text-classification lesson on real SST-2: dev accuracy,
training time and peak memory.

    LMCOURSE_DATA_DIR=../shared/data python benchmarks/bow_baseline.py [--threads 1] [--seed 1337]

Trains `lm.classification.train_bow_classifier` (unigrams and bigrams, counts, logistic regression,
Adam) on SST-2's train split (67,349 phrases) and evaluates on dev (872 sentences). The data comes
from $LMCOURSE_DATA_DIR/sst2 or the Hub, never the synthetic sample (its numbers would mean nothing).
The reference figure for a bag-of-words linear model is about 0.80-0.82 dev accuracy.

The defaults (bigrams, 3 epochs, lr 0.01, weight decay 1e-6) were chosen on a 10% model-selection
slice of train (`lm.data.model_selection_split`), not on dev; `--select` repeats that comparison.
Training time covers fitting the vocabulary, encoding train and training; peak RSS is the whole
process's (Python, torch and datasets included).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmcourse import classification, data  # noqa: E402
from lmcourse.config import DEFAULT_SEED  # noqa: E402

REAL = ("local", "online")  # never the synthetic sample

CANDIDATES = {  # what --select compares on the model-selection slice
    "unigrams, 4 epochs, lr 0.02": dict(bag=dict(bigrams=False), epochs=4, lr=0.02, weight_decay=0.0),
    "bigrams, 4 epochs, lr 0.02": dict(bag=dict(bigrams=True), epochs=4, lr=0.02, weight_decay=0.0),
    "bigrams, 4 epochs, lr 0.02, wd 1e-5": dict(bag=dict(bigrams=True), epochs=4, lr=0.02, weight_decay=1e-5),
    "bigrams, 3 epochs, lr 0.01, wd 1e-6": dict(bag=dict(bigrams=True), epochs=3, lr=0.01, weight_decay=1e-6),
    "bigrams binary, 4 epochs, lr 0.02, wd 1e-5": dict(bag=dict(bigrams=True, weighting="binary"), epochs=4,
                                                       lr=0.02, weight_decay=1e-5),
}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (ru_maxrss is KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def select(train, seed: int) -> None:
    """Compare the candidate settings on a 10% slice of train (dev is not looked at)."""
    rest, held = data.model_selection_split(train, 0.1, seed=seed)
    print(f"model selection: {len(rest):,} train rows, {len(held):,} held out "
          "(optimistic: SST-2's phrases share sub-phrases)")
    for name, kwargs in CANDIDATES.items():
        kwargs = dict(kwargs)
        bag = classification.BagOfWords(**kwargs.pop("bag"))
        r = classification.train_bow_classifier(rest["sentence"], rest["label"], held["sentence"],
                                                held["label"], bag=bag, seed=seed, **kwargs)
        print(f"  {name:45} held-out accuracy {r.dev_accuracy:.4f}  {r.train_seconds:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--select", action="store_true", help="first compare settings on a train slice")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train = data.load_sst2("train", sources=REAL)
        dev = data.load_sst2("validation", sources=REAL)
    except data.DataError as e:
        sys.exit(f"{e}\nThis benchmark needs the real SST-2.")
    if args.select:
        select(train, args.seed)
    rss_before = peak_rss_mib()
    t0 = time.perf_counter()
    result = classification.train_bow_classifier(train["sentence"], train["label"], dev["sentence"],
                                                 dev["label"], seed=args.seed)
    total = time.perf_counter() - t0
    preds = result.model.predict(dev["sentence"])
    cm = classification.confusion_matrix(preds, torch.tensor(dev["label"]), 2)
    report = classification.classification_report(cm, names=dev.features["label"].names)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), seed {args.seed}")
    print(f"vocabulary: {result.model.bag}")
    print(f"training loss per epoch: {', '.join(f'{x:.4f}' for x in result.losses)}")
    print(report)
    print(f"dev accuracy: {result.dev_accuracy:.4f} (reference for bag-of-words: about 0.80-0.82)")
    print(f"training time: {result.train_seconds:.1f} s (vocabulary, encoding, {len(result.losses)} "
          f"epochs); with dev evaluation {total:.1f} s")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (before training: {rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
