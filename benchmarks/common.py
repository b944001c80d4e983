"""What the benchmark scripts share (they run as scripts, so `benchmarks/` is on their path)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB.

    On Linux it is VmHWM from /proc/self/status: the high-water mark of this process's own address
    space. (getrusage's ru_maxrss survives execve, so a child started by a large parent would
    report the parent's peak.) Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20
