"""Greedy generation with and without the KV cache of the course's GPT, against the number of new tokens.

    python benchmarks/kv_cache.py [--new-tokens 64 128 256 512 1024] [--prompt 16] [--batch 1]
                                  [--d-model 128] [--n-layers 4] [--n-heads 4] [--vocab 65]
                                  [--repeats 1] [--threads N] [--device cpu]

A GPT with random weights (the time does not depend on them) whose context holds the prompt and
the longest generation. For each number of new tokens: the seconds greedy generation takes with
the cache (the prompt once, then one token per step) and without it (the whole sequence every
step), the fastest of `--repeats` runs; the speed-up; and the cache's size at the end, measured
(the bytes of its tensors) and by the formula 2 * n_layers * B * T * d_model * bytes per element
(T: every token but the last, which is never fed). Both runs must produce the same tokens.

In a fresh process the uncached loop also pays the C allocator: each step allocates tensors a
little larger than the last, glibc hands the freed memory back to the system and faults it in
again (on a 2-core machine, 512 new tokens: 7.3 s without the cache, and the run spent 3.7 s in
the operating system).
A long-running process such as a notebook kernel, whose heap has grown, does not; to measure that
case, raise glibc's thresholds: `MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000
python benchmarks/kv_cache.py` (then 4.7 s, 0.3 s in the operating system; with the cache 0.5 s either way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmcourse import config  # noqa: E402
from lmcourse import pretraining as pt  # noqa: E402
from lmcourse.transformer import GPT, GPTConfig  # noqa: E402


def build_model(prompt: int, longest: int, d_model: int, n_layers: int, n_heads: int, vocab: int,
                device: torch.device, seed: int = config.DEFAULT_SEED) -> GPT:
    """A random GPT (d_ff = 4 d_model) whose context holds the prompt and `longest` new tokens."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=prompt + longest, d_model=d_model, n_layers=n_layers,
                    n_heads=n_heads, d_ff=4 * d_model, dropout=0.0, attn_dropout=0.0)
    return pt.init_gpt2_weights(GPT(cfg)).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--batch", type=int, default=1, help="sequences generated side by side")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=65, help="65: Tiny Shakespeare's characters")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the fastest counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default=None, help="default: lm.get_device()")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = config.get_device(args.device)
    model = build_model(args.prompt, max(args.new_tokens), args.d_model, args.n_layers, args.n_heads,
                        args.vocab, device)
    c = model.cfg
    print(f"GPT: d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, vocabulary {c.vocab_size}, "
          f"block_size {c.block_size}; prompt {args.prompt} tokens, batch {args.batch}; {device}, "
          f"{torch.get_num_threads()} threads")
    rows = pt.time_generation(model, args.prompt, args.new_tokens, batch_size=args.batch,
                              repeats=args.repeats)
    print(pt.format_timings(rows))
    if not all(r.same_tokens for r in rows):
        raise SystemExit("the cached and the uncached generation disagree")
    if any(r.cache_bytes != r.formula_bytes for r in rows):
        raise SystemExit("the measured cache size differs from the formula")


if __name__ == "__main__":
    main()
