"""Serving the NER model: throughput, latency and test F1 of every way lesson 08 runs it, against
transformers' token-classification pipeline, on the CoNLL-2003 test sentences (CPU).

    LMCOURSE_DATA_DIR=../shared/data python benchmarks/serve.py [--model DIR] [--sentences N]
        [--batch-size 16] [--threads 2] [--repeats 1] [--variants pipeline,fp32,onnx,int8,...]
        [--service-requests 400] [--skip-service] [--quick-check]

The model is lesson 07's fine-tuned NER model (`lm.predict.load_or_fine_tune`: loaded from where
lesson 07 saved it for $LMCOURSE_MODE, default quick; fine-tuned with lesson 07's recipe first when
absent) or `--model DIR`, a folder saved by `lm.predict.save_ner_model`.

Every variant gets the same raw texts (each test sentence's words joined by spaces) and returns
entity spans with character offsets; its test F1 is computed from those spans
(`lm.predict.raw_text_scores`: entity-level, seqeval). Two timings per variant:

- **bulk**: all sentences in one call, `--batch-size` at a time (the predictor sorts them by
  length; the pipeline takes them in order): sentences per second, the fastest of `--repeats`
  passes (other work on the machine only slows a pass down);
- **requests**: the sentences in consecutive requests of `--batch-size` sentences, one after the
  other: p50 and p95 latency of a request (what a client of the service waits).

Variants (`--variants`, comma-separated, in this order by default):
- `pipeline`: `transformers.pipeline("token-classification", aggregation_strategy="first")` with
  `batch_size` (the baseline every ratio is taken against);
- `fp32`: `lm.predict.NerPredictor` with the PyTorch model;
- `onnx`, `int8`: the predictor on ONNX Runtime, fp32 and int8 dynamic quantization (`lm.export`);
(PyTorch's own dynamic int8 quantization, `torch.ao.quantization.quantize_dynamic`, is left out: in
torch 2.13 it is deprecated and scheduled for removal.)
- `half-layers`: the first half of the encoder layers (or `--student-layers`) kept (`lm.compress.keep_first_layers`), no
  retraining: what trimming alone costs;
- `distilled`: the same trimmed student distilled from the full model on CoNLL train for
  `--distill-epochs` at `--distill-lr` (`lm.compress.distill_ner`, lesson 08's settings: T=2,
  alpha=0.5, batch 32), and `distilled-int8` its ONNX int8 version.

Then the service (`lmcourse serve`, started by `lm.serve.running`) under load: `--service-requests`
POST /entities requests of one sentence each, `--concurrency` at a time, with 1 and 2 worker
processes: requests per second, p50/p95 latency, errors. The client runs on the same machine, so
on 2 cores it competes with the workers; the table says how many cores there were.

--quick-check runs everything on 64 sentences of the synthetic sample with a model fine-tuned for a
few steps; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import peak_rss_mib  # noqa: E402  (benchmarks/common.py)

from lmcourse import config, data, predict  # noqa: E402
from lmcourse.export import file_size_mb as folder_mib  # noqa: E402

Predict = Callable[[list[str]], list[list[Any]]]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values (numpy's linear interpolation)."""
    import numpy as np

    return float(np.quantile(values, q)) if values else float("nan")


def measure(name: str, run: Predict, texts: list[str], sentences: list[list[str]],
            gold: list[list[str]], batch: int, size_mib: float, repeats: int = 1) -> dict[str, Any]:
    """Bulk throughput (the fastest of `repeats` passes), request latency and test F1 of one
    variant."""
    run(texts[:batch])  # warm-up: first-call allocations, lazy initialisation
    bulk = float("inf")
    for _ in range(repeats):
        # the fastest pass: other processes only ever slow a pass down, never speed it up
        t0 = time.perf_counter()
        found = run(texts)
        bulk = min(bulk, time.perf_counter() - t0)
    latencies = []
    for i in range(0, len(texts), batch):
        t = time.perf_counter()
        run(texts[i:i + batch])
        latencies.append(time.perf_counter() - t)
    scores = predict.raw_text_scores(found, sentences, gold)
    row = dict(name=name, per_s=len(texts) / bulk, p50=percentile(latencies, 0.5) * 1000,
               p95=percentile(latencies, 0.95) * 1000, f1=scores["f1"], size=size_mib,
               peak=peak_rss_mib())
    print(f"  {name}: {row['per_s']:.0f} sentences/s, request p50 {row['p50']:.0f} ms / p95 "
          f"{row['p95']:.0f} ms, test F1 {row['f1']:.4f}, {size_mib:.1f} MiB", flush=True)
    return row


def pipeline_predict(model: Any, tokenizer: Any, batch: int) -> Predict:
    """The baseline: transformers' pipeline, its spans as lm.predict.Entity."""
    import transformers

    pipe = transformers.pipeline("token-classification", model=model, tokenizer=tokenizer,
                                 aggregation_strategy="first", device="cpu")
    return lambda texts: predict.pipeline_entities(pipe, texts, batch)


def service_load(model_dir: Path, texts: list[str], workers: int, n_requests: int,
                 concurrency: int) -> dict[str, Any]:
    """Requests/s and latency of the real service with `workers` processes under concurrent load."""
    import asyncio

    import httpx

    from lmcourse import serve

    payloads = [{"text": texts[i % len(texts)]} for i in range(n_requests)]
    with serve.running(model_dir, workers=workers) as url:
        async def go() -> tuple[list[float], int, float]:
            latencies: list[float] = []
            errors = 0
            queue = list(payloads)
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                await client.post("/entities", json=payloads[0])  # warm-up

                async def worker() -> None:
                    nonlocal errors
                    while queue:
                        body = queue.pop()
                        t = time.perf_counter()
                        r = await client.post("/entities", json=body)
                        latencies.append(time.perf_counter() - t)
                        errors += r.status_code != 200

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return latencies, errors, time.perf_counter() - t0

        latencies, errors, seconds = asyncio.run(go())
    row = dict(workers=workers, rps=n_requests / seconds, p50=percentile(latencies, 0.5) * 1000,
               p95=percentile(latencies, 0.95) * 1000, errors=errors)
    print(f"  {workers} worker(s): {row['rps']:.1f} requests/s, p50 {row['p50']:.0f} ms, "
          f"p95 {row['p95']:.0f} ms, {errors} errors", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a folder of save_ner_model")
    parser.add_argument("--sentences", type=int, default=None, help="test sentences (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--repeats", type=int, default=1, help="bulk passes per variant; the "
                        "fastest counts (use 3 or more on a machine that runs other work)")
    parser.add_argument("--variants", default="pipeline,fp32,onnx,int8,half-layers,"
                                              "distilled,distilled-int8")
    parser.add_argument("--distill-epochs", type=float, default=1.0)
    parser.add_argument("--distill-lr", type=float, default=1e-4)
    parser.add_argument("--student-layers", type=int, default=None,
                        help="layers of the trimmed and distilled students (default: half)")
    parser.add_argument("--service-requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--quick-check", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading and saving bars would bury the figures
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.quick_check else os.environ.get("LMCOURSE_MODE", "quick")
    if args.quick_check:
        os.environ.setdefault("LMCOURSE_CACHE", tempfile.mkdtemp(prefix="lmcourse-bench-"))
    model_dir, how = (args.model, "given") if args.model else predict.load_or_fine_tune(mode=mode)
    print(f"model: {model_dir} ({how})")
    test = data.load_conll("test", quiet=True)
    n = 64 if args.quick_check else args.sentences
    sentences = test["tokens"][:n] if n else test["tokens"]
    names = test.features["ner_tags"].feature.names
    gold = [[names[t] for t in row] for row in (test["ner_tags"][:n] if n else test["ner_tags"])]
    texts = [predict.join_words(s)[0] for s in sentences]
    print(f"{len(texts):,} test sentences ({test.info.description or 'CoNLL-2003'}), batch "
          f"{args.batch_size}, {args.threads or 'default'} threads, {os.cpu_count()} cores")

    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    work = Path(tempfile.mkdtemp(prefix="lmcourse-serve-bench-"))
    wanted = args.variants.split(",")
    rows: list[dict[str, Any]] = []
    bs = args.batch_size

    def predictor(m: Any) -> Predict:
        return predict.NerPredictor(m, tokenizer, device="cpu", batch_size=bs).predict

    def onnx_of(m: Any, name: str, int8: bool) -> tuple[Predict, float]:
        from lmcourse import export

        path = export.export_onnx(m, work / f"{name}.onnx")
        if int8:
            path = export.quantize_int8(path, work / f"{name}-int8.onnx")
        session = export.OnnxTokenClassifier(path, threads=args.threads)
        return predictor(session), folder_mib(path)

    full_mib = folder_mib(model_dir)
    for name in wanted:
        if name == "pipeline":
            rows.append(measure(name, pipeline_predict(model, tokenizer, bs), texts, sentences, gold,
                                bs, full_mib, args.repeats))
        elif name == "fp32":
            rows.append(measure(name, predictor(model), texts, sentences, gold, bs, full_mib, args.repeats))
        elif name in ("onnx", "int8"):
            run, size = onnx_of(model, "model", int8=name == "int8")
            rows.append(measure(f"ONNX Runtime {'int8' if name == 'int8' else 'fp32'}", run, texts,
                                sentences, gold, bs, size, args.repeats))
        elif name in ("half-layers", "distilled", "distilled-int8"):
            from lmcourse import compress

            k = args.student_layers or model.config.num_hidden_layers // 2
            if name == "half-layers":
                student = compress.keep_first_layers(model, k)
                student.save_pretrained(work / "half")
                rows.append(measure(f"first {k} of {model.config.num_hidden_layers} layers", predictor(student),
                                    texts, sentences, gold, bs, folder_mib(work / "half"), args.repeats))
                continue
            if not (work / "distilled").exists():
                train = data.load_conll("train", quiet=True)
                dev = data.load_conll("validation", quiet=True)
                if args.quick_check:
                    train, dev = train.select(range(64)), dev.select(range(32))
                t0 = time.perf_counter()
                config.seed_everything(config.DEFAULT_SEED)  # the dropout masks
                run = compress.distill_ner(model, compress.keep_first_layers(model, k), tokenizer,
                                           train, dev, names, epochs=args.distill_epochs,
                                           lr=args.distill_lr, batch_size=32, temperature=2.0,
                                           alpha=0.5, bf16=config.bf16_pays(torch.device("cpu")),
                                           seed=config.DEFAULT_SEED, device="cpu")
                print(f"  distilled {k} layers in {time.perf_counter() - t0:.0f} s, dev F1 "
                      f"{run.dev.get('f1', float('nan')):.4f}")
                run.model.save_pretrained(work / "distilled")
            student = AutoModelForTokenClassification.from_pretrained(str(work / "distilled")).eval()
            if name == "distilled":
                rows.append(measure(f"distilled, {k} layers", predictor(student), texts, sentences,
                                    gold, bs, folder_mib(work / "distilled"), args.repeats))
            else:
                run_, size = onnx_of(student, "distilled", int8=True)
                rows.append(measure(f"distilled, {k} layers, ONNX int8", run_, texts, sentences, gold,
                                    bs, size, args.repeats))
        else:
            raise SystemExit(f"unknown variant {name!r}; choose from {parser.get_default('variants')}")

    base = next((r for r in rows if r["name"] == "pipeline"), rows[0])
    ref_f1 = next((r["f1"] for r in rows if r["name"] == "fp32"), base["f1"])
    print("\n| variant | sentences/s | vs pipeline | request p50 ms | p95 ms | test F1 | vs fp32 | "
          "size MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['per_s']:.0f} | {r['per_s'] / base['per_s']:.2f}x | {r['p50']:.0f} | "
              f"{r['p95']:.0f} | {r['f1']:.4f} | {100 * (r['f1'] - ref_f1):+.2f} | {r['size']:.1f} | "
              f"{r['peak']:.0f} |")
    print("(peak RSS is this process's high-water mark so far: it only grows down the table)")

    if not args.skip_service:
        print(f"\nthe service under load: {args.service_requests} requests of one sentence, "
              f"{args.concurrency} at a time, client on the same {os.cpu_count()}-core machine")
        n_req = 40 if args.quick_check else args.service_requests
        srows = [service_load(model_dir, texts, w, n_req, args.concurrency) for w in (1, 2)]
        print("\n| workers | requests/s | vs 1 worker | p50 ms | p95 ms | errors |")
        print("|---|---|---|---|---|---|")
        for r in srows:
            print(f"| {r['workers']} | {r['rps']:.1f} | {r['rps'] / srows[0]['rps']:.2f}x | {r['p50']:.0f} | "
                  f"{r['p95']:.0f} | {r['errors']} |")


if __name__ == "__main__":
    main()
