"""What a process holds, read from /proc, and a trend through noisy samples: shared by the
recovery tests and samples/soak.py."""

from __future__ import annotations

import os


def rss_bytes() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def growth_over(samples: list[tuple[float, float]]) -> float:
    """Least-squares growth of y over the span of x (y's units): a trend, not one noisy sample."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in samples) / sum((x - mean_x) ** 2 for x, _ in samples)
    return slope * (samples[-1][0] - samples[0][0])
