"""Ray workers beside one process: the study's images per second with 1 and 2 Ray workers and in-process.

    python bench/ray_workers.py [--stride 4] [--samples 16] [--workers 1,2] [--model embedded]

Every side samples the same study arms (every K-th arm, `--samples` seeds each) in batches of the arm's seeds,
measured as the study measures them. "process" is one process on one thread (services.dispatch.LocalDispatcher);
"ray N" a local Ray cluster (loopback) of N CPU workers of one thread each, the time counted from when the
workers have loaded the model (the cluster's start and the loads are printed apart). On a host with C free
cores N <= C workers can approach N times one process; on a 2-core machine that others share, what 2 workers
show is bounded by the cores the others leave (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4, help="every K-th arm of the study")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch

    from engine.models import load_bundle
    from tnr_tui.services.checks import is_embedded
    from tnr_tui.services.dispatch import LocalDispatcher
    from tnr_tui.services.dispatch.ray_driver import RayDispatcher
    from tnr_tui.services.study import StudyConfig, all_arms
    from tnr_tui.services.study.running import run_arms

    torch.set_num_threads(1)
    cfg = StudyConfig(samples=args.samples, model=args.model)
    arms = all_arms(cfg)[:: max(1, args.stride)]
    images = len(arms) * cfg.samples
    print(f"{len(arms)} arms x {cfg.samples} seeds = {images} images; load average {os.getloadavg()[0]:.1f}")
    bundle = load_bundle(args.model, device="cpu")
    embedded = is_embedded(args.model, bundle)
    rates = {}

    def timed(name: str, dispatcher) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        run_arms(arms, cfg, None, embedded=embedded, log=lambda _: None, dispatcher=dispatcher)
        seconds = time.perf_counter() - wall
        rates[name] = images / seconds
        driver_cpu = time.process_time() - cpu
        print(f"  {name:<8} {seconds:7.1f} s  {rates[name]:6.2f} images/s  (driver CPU {driver_cpu:.1f} s)", flush=True)

    timed("process", LocalDispatcher(bundle, args.model))
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    print(f"  ray local cluster started in {time.perf_counter() - started:.1f} s")
    try:
        for count in (int(n) for n in args.workers.split(",")):
            started = time.perf_counter()
            dispatcher = RayDispatcher("local", args.model, workers=count, threads=1, log=lambda _: None)
            print(f"  ray {count}: workers loaded in {time.perf_counter() - started:.1f} s")
            try:
                timed(f"ray {count}", dispatcher)
            finally:
                dispatcher.close()
    finally:
        ray.shutdown()
    base = rates["process"]
    print(
        "  " + ", ".join(f"{name}: {rate / base:.2f}x one process" for name, rate in rates.items() if name != "process")
    )
    print(f"  load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
