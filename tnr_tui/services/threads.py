"""How many CPU threads torch gets in the lab and `generate` (sweep and study have their own --threads, default 1).

Measured on this project's 2-core machine with one other busy process (a training run): a 20-step image of the
embedded model took 0.33-0.38 s with one torch thread and 1.1-1.5 s with two, because two OpenMP threads that
wait for each other stall whenever one is descheduled. On an idle 2-core machine two threads gain only ~10 %.
So machines with two cores or fewer get one thread; bigger ones keep torch's default (the physical cores).
"""

from __future__ import annotations

import os

ENV_THREADS = "TNR_LAB_THREADS"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def choose_cpu_threads(requested: int | None = None, environ: dict[str, str] | None = None) -> int | None:
    """The thread count to set, or None to leave torch's own choice alone.

    `requested` (--threads) wins, 0 meaning torch's default; then $TNR_LAB_THREADS; a user's $OMP_NUM_THREADS
    is respected as it is; otherwise 1 on machines with two usable cores or fewer. ValueError for bad values.
    """
    env = os.environ if environ is None else environ
    if requested is None and env.get(ENV_THREADS, "").strip():
        text = env[ENV_THREADS].strip()
        try:
            requested = int(text)
        except ValueError:
            raise ValueError(f"{ENV_THREADS} must be a whole number (0 = torch's default), got {text!r}") from None
    if requested is not None:
        if requested < 0:
            raise ValueError(f"threads must be 0 (torch's default) or more, got {requested}")
        limit = max(8, 4 * usable_cores())  # OpenMP crashed outright at 100 000 threads
        if requested > limit:
            raise ValueError(
                f"threads must be at most {limit} on this machine ({usable_cores()} cores), got {requested}"
            )
        return requested or None
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    return 1 if usable_cores() <= 2 else None


def apply_cpu_threads(requested: int | None = None) -> int | None:
    """Set torch's intra-op threads by `choose_cpu_threads`; returns what was set (None: torch's default)."""
    threads = choose_cpu_threads(requested)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads
