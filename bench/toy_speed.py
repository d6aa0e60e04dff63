"""Sampling speed of the embedded model: median seconds of one 20-step Euler + CFG image on this machine.

    python bench/toy_speed.py [--runs 7] [--threads 1,2] [--model embedded]

Times `engine.sampler.sample` (the lab's real path: encode, 20 batched UNet calls, decode) after one warm-up
run, for each thread count; the goal of issue 3 is <= 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to time")
    args = parser.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads expects integers like 1,2, got {args.threads!r}")
    import torch

    from engine.models import ModelError, load_bundle
    from engine.request import GenerationRequest
    from engine.sampler import sample

    try:
        bundle = load_bundle(args.model, device="cpu")
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    request = GenerationRequest(
        prompt="a red circle on a blue background", steps=args.steps, guidance="cfg", scale=6.0, preview_every=0
    )
    for count in threads:
        torch.set_num_threads(count)
        sample(bundle, request)  # warm-up: first-call allocations and lazy imports
        wall, sampling = [], []
        for seed in range(args.runs):
            started = time.perf_counter()
            result = sample(bundle, request.replace(seed=seed))
            wall.append(time.perf_counter() - started)
            sampling.append(float(result.stats["seconds"]))
        print(
            f"threads={count}: median {statistics.median(sampling):.3f} s per {args.steps}-step cfg image "
            f"(min {min(sampling):.3f}, max {max(sampling):.3f}; wall median {statistics.median(wall):.3f} s; "
            f"{result.stats['model_evaluations']} model evaluations)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
