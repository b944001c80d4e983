"""The lesson's attention (lm.attention) against PyTorch's fused F.scaled_dot_product_attention.

    python benchmarks/attention.py [--mask causal|padding|none] [--repeats 5] [--threads N]
                                   [--sizes B,H,T,D ...] [--no-memory]

For each size (batch B, heads H, length T, d_head D), on the CPU, in float32, forward only:

* max |diff|: the largest absolute difference between the two outputs;
* ours / torch (ms): the fastest of `--repeats` timed calls after one warm-up call, and their ratio;
* scores (MiB): the size of one float32 (B, H, T, T) score matrix, which lm.attention materialises
  (several times over: scores, exponentials, weights) and the fused kernel never stores whole;
* +RSS ours / torch (MiB): how far the process's peak resident memory (VmHWM) rises above its
  level just before one call, the inputs already allocated (Linux: the peak is reset through
  /proc/self/clear_refs before each call). tracemalloc does not see torch's allocations, and
  getrusage's ru_maxrss cannot be reset; VmHWM can.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import math
import re
import sys
import time

import torch
import torch.nn.functional as F

from lmcourse import attention

DEFAULT_SIZES = [  # (B, H, T, d_head)
    (1, 4, 128, 64),
    (8, 12, 128, 32),   # MiniLM-like: a batch of 8 sentences of 128 tokens
    (4, 8, 256, 64),
    (2, 8, 512, 64),
    (1, 8, 1024, 64),
    (1, 4, 2048, 64),
]


def make_inputs(B: int, H: int, T: int, D: int, mask_kind: str, seed: int = 0):
    """q, k, v of shape (B, H, T, D), a bool mask (or None) and is_causal."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    if mask_kind == "padding":  # the second half of the batch is padded to half length
        lengths = torch.tensor([T if b < (B + 1) // 2 else T // 2 for b in range(B)])
        am = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
        return q, k, v, attention.padding_mask(am), False
    return q, k, v, None, mask_kind == "causal"


def run(impl: str, q, k, v, mask, is_causal: bool) -> torch.Tensor:
    if impl == "ours":
        return attention.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def best_ms(inputs, repeats: int) -> tuple[float, float]:
    """Fastest call of each implementation in ms, ours and torch's calls interleaved, so that a
    busy machine slows both alike."""
    best = {"ours": float("inf"), "torch": float("inf")}
    for i in range(repeats + 1):
        for impl in best:
            t0 = time.perf_counter()
            run(impl, *inputs)
            if i > 0:  # the first round warms up
                best[impl] = min(best[impl], time.perf_counter() - t0)
    return best["ours"] * 1e3, best["torch"] * 1e3


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def fixed_mmap_threshold() -> bool:
    """Make glibc serve every block over 128 KiB by mmap and return it on free, so the resident
    set follows the live tensors (by default glibc raises that threshold after frees and keeps
    freed blocks resident, which hides later peaks)."""
    try:
        return bool(_libc().mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def peak_rss_growth_mib(impl: str, inputs) -> float:
    """How far the resident set's peak (VmHWM) rises above its level before one call, in MiB.

    Linux resets the peak when "5" is written to /proc/self/clear_refs; elsewhere returns nan.
    """
    try:
        gc.collect()
        _libc().malloc_trim(0)  # give freed heap pages back, so reused ones count again
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_mib("VmRSS")
        run(impl, *inputs)
        return _status_mib("VmHWM") - before
    except (OSError, AttributeError):
        return math.nan


def parse_size(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(x) for x in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a size is B,H,T,D (4 integers), got {text!r}")
    return parts  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask", choices=["causal", "padding", "none"], default="causal")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=DEFAULT_SIZES)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, cpu, {args.threads} threads, float32, forward only, "
          f"mask: {args.mask}, best of {args.repeats}")
    rows = []
    with torch.no_grad():
        for size in args.sizes:  # differences and times first, with glibc's default allocator
            inputs = make_inputs(*size, args.mask)
            diff = (run("ours", *inputs) - run("torch", *inputs)).abs().max().item()
            rows.append([size, diff, *best_ms(inputs, args.repeats)])
        fixed = not args.no_memory and fixed_mmap_threshold()
        if not args.no_memory and not fixed:
            print("(could not fix glibc's mmap threshold: +RSS may under-count)")
        for row in rows:  # then peak memory (mmap for every large block slows calls down)
            inputs = make_inputs(*row[0], args.mask)
            row += [math.nan, math.nan] if args.no_memory else [
                peak_rss_growth_mib("ours", inputs), peak_rss_growth_mib("torch", inputs)]

    head = (f"{'B':>3} {'H':>3} {'T':>5} {'D':>3} | {'max|diff|':>9} | {'ours ms':>8} "
            f"{'torch ms':>8} {'ratio':>6} | {'scores MiB':>10} {'+RSS ours':>9} {'+RSS torch':>10}")
    print(head)
    print("-" * len(head))
    for (B, H, T, D), diff, t_ours, t_torch, m_ours, m_torch in rows:
        scores_mib = B * H * T * T * 4 / 2**20
        print(f"{B:3d} {H:3d} {T:5d} {D:3d} | {diff:9.1e} | {t_ours:8.2f} {t_torch:8.2f} "
              f"{t_ours / t_torch:6.2f} | {scores_mib:10.1f} {m_ours:9.1f} {m_torch:10.1f}")
    worst = max(r[1] for r in rows)
    print(f"largest difference over all sizes: {worst:.1e} "
          f"({'within' if worst < 1e-5 else 'OUTSIDE'} 1e-5)")
    sys.exit(0 if worst < 1e-5 else 1)


if __name__ == "__main__":
    main()
