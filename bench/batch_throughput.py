"""The study's images per second, batched seeds beside one image at a time, on this machine.

    python bench/batch_throughput.py [--samples 32] [--stride 1] [--threads 1] [--batch N] [--model embedded]
                                     [--device cpu|cuda|mps]

Both sides run the study's real path, arm by arm and paired (each arm both ways, alternating which goes first) (services.study.running.run_arms: every arm over every seed, each image
sampled, measured, the checker's verdicts, thumbnails) on one loaded model: "one at a time" is today's
engine.sampler.sample per image, "batched" samples each arm's seeds in batches (services.dispatch, the batch
size from the memory budget unless --batch). `--stride K` takes every K-th arm of the study (1: all of it).
Then where the time goes: the UNet's cost per call and per row at batch 1 and at the batch size, and the
per-image work that batching does not touch (encode, decode, measuring). `--device cuda` measures a GPU (the
issue's second goal, where a device is lent): each timed call then waits for the device (synchronize).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def minor_faults() -> int:
    """This process's minor page faults so far (memory the kernel handed it page by page)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def synchronize(device) -> None:
    """Wait for the device's queued work (a GPU call returns before it has run)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def unet_costs(bundle, batch: int, repeats: int = 5) -> dict[int, tuple[float, float]]:
    """(median seconds, mean minor page faults) of one UNet call of `rows` rows (1 and 2 rows per image, at
    batch 1 and `batch`)."""
    import torch

    cond = bundle.encode(["", "a red circle on a blue background"], 64, 64, zero_if_empty=[True, False])
    costs = {}
    for rows in sorted({1, 2, batch, 2 * batch}):
        x = torch.randn(rows, bundle.latent_channels, 8, 8)
        c = cond.select([1]).repeat(rows)
        bundle.eps(x, 3.0, 500.0, c)
        synchronize(bundle.device)
        times = []
        faults = minor_faults()
        for _ in range(repeats):
            started = time.perf_counter()
            bundle.eps(x, 3.0, 500.0, c)
            synchronize(bundle.device)
            times.append(time.perf_counter() - started)
        costs[rows] = (statistics.median(times), (minor_faults() - faults) / repeats)
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=32, help="seeds per arm (the study's default: 32)")
    parser.add_argument("--stride", type=int, default=1, help="every K-th arm of the study (default 1: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the study's default: 1)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: the memory budget's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    args = parser.parse_args(argv)
    import torch

    from engine.models import ModelError, load_bundle
    from tnr_tui.services.checks import is_embedded
    from tnr_tui.services.dispatch import LocalDispatcher
    from tnr_tui.services.study import StudyConfig, all_arms, engine_sampler
    from tnr_tui.services.study.running import run_arms

    torch.set_num_threads(args.threads)
    from engine.memory import ENV

    # The C allocator's policy (engine/memory.py) is set when the model loads; TNR_LAB_MALLOC=default measures
    # glibc's own, as the lab sampled before it.
    print(f"allocator: {'glibc default' if os.environ.get(ENV, '').lower() == 'default' else 'engine.memory'}")
    try:
        bundle = load_bundle(args.model, device=args.device)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = StudyConfig(samples=args.samples, model=args.model)
    arms = all_arms(cfg)[:: max(1, args.stride)]
    images = len(arms) * cfg.samples
    embedded = is_embedded(args.model, bundle)
    dispatcher = LocalDispatcher(bundle, args.model)
    print(
        f"study: {len(arms)} arms x {cfg.samples} seeds = {images} images, {args.threads} thread(s), "
        f"torch {torch.__version__}, {bundle.device}",
        flush=True,
    )
    # Paired, arm by arm: each arm one at a time, then batched (alternating which goes first), so a shared
    # machine's load falls on both sides alike. Wall seconds and this process's CPU seconds, both summed.
    totals = {side: [0.0, 0.0] for side in ("alone", "batched")}
    for k, arm in enumerate(arms):
        order = ("alone", "batched") if k % 2 == 0 else ("batched", "alone")
        for side in order:
            wall, cpu = time.perf_counter(), time.process_time()
            if side == "alone":
                run_arms([arm], cfg, engine_sampler(bundle), embedded=embedded, log=lambda _: None)
            else:
                run_arms(
                    [arm], cfg, None, embedded=embedded, log=lambda _: None, dispatcher=dispatcher, batch=args.batch
                )
            totals[side][0] += time.perf_counter() - wall
            totals[side][1] += time.process_time() - cpu
        print(
            f"  {arm.label:<26} alone {totals['alone'][0]:7.1f} s, batched {totals['batched'][0]:7.1f} s (so far)",
            flush=True,
        )
    for side, (wall, cpu) in totals.items():
        print(
            f"  {side:<8} {images / wall:6.2f} images/s wall ({wall:.1f} s), {images / cpu:6.2f} images per CPU second"
        )
    print(
        f"  batched / one at a time: {totals['alone'][0] / totals['batched'][0]:.2f}x wall, "
        f"{totals['alone'][1] / totals['batched'][1]:.2f}x CPU time",
        flush=True,
    )

    batch = dispatcher.batch_size(arms[0].request(), cfg.samples, args.batch)
    costs = unet_costs(bundle, batch)
    print(f"where the time goes (batch size {batch}):")
    for rows, (seconds, faults) in costs.items():
        print(
            f"  UNet call of {rows:>3} rows: {seconds * 1000:7.1f} ms = {seconds * 1000 / rows:6.2f} ms a row, "
            f"{faults:6.0f} page faults a call"
        )
    prompts = ["", "a red circle on a blue background"]
    started = time.perf_counter()
    for _ in range(10):
        bundle.encode(prompts, 64, 64, zero_if_empty=[True, False])
    encode = (time.perf_counter() - started) / 10
    latent = torch.randn(1, bundle.latent_channels, 8, 8)
    started = time.perf_counter()
    for _ in range(10):
        bundle.decode(latent)
    synchronize(bundle.device)
    decode = (time.perf_counter() - started) / 10
    from engine.preview import decoded_to_image
    from tnr_tui.services.study.running import measure

    image = decoded_to_image(bundle.decode(latent))
    started = time.perf_counter()
    for _ in range(10):
        measure(image, prompts[1], embedded)
    measured = (time.perf_counter() - started) / 10
    print(
        f"  per image, batched or not: encode {encode * 1000:.1f} ms (once per prompt in a batched worker), "
        f"decode {decode * 1000:.1f} ms, measure {measured * 1000:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
