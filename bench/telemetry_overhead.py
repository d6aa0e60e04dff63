"""What per-step telemetry costs: sampling time with it on vs off, side by side (issue 15: <= 3 %).

    python bench/telemetry_overhead.py [--models embedded,tiny] [--repeats 15] [--steps 20]
                                       [--guidance cfg] [--solver euler] [--live] [--device cpu]

For each model, the same request is sampled with `telemetry=True` and `telemetry=False`, interleaved (on, off,
off, on, ...: the order alternates, so drift of the machine falls on both arms), after one warm-up of each.
The time is the sampler's own `stats["seconds"]` (encode, the loop, the final decode: what a run costs). It
prints, for wall time and for the process's CPU time, the ratio on/off of each arm's fastest repeat (on a
busy shared host the fastest is the run least disturbed by others; medians there jitter by more than the
effect) and the median of the per-pair ratios; and the share of the on-runs' time spent inside the
recorder's own calls (engine.telemetry.Recorder and the sampler's cond_and_uncond, timed around each call).
`--live` also passes an `on_step` callback (as the TUI does: the rows then reach the CPU every step); without
it the rows move once at the end. `tiny` is the tests' random SDXL-topology fixture (built into a temporary directory).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


class _Timed:
    """Seconds spent inside the recorder's calls (the sampler's Recorder replaced by a timing subclass)."""

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        import engine.sampler
        from engine.telemetry import Recorder

        def timed(method):  # noqa: ANN001, ANN202
            def call(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
                started = time.perf_counter()
                try:
                    return method(self, *a, **kw)
                finally:
                    cls.seconds += time.perf_counter() - started

            return call

        names = ("first_stage", "end_step", "last_rows", "tables")
        timing = type("TimedRecorder", (Recorder,), {n: timed(getattr(Recorder, n)) for n in names})
        engine.sampler.Recorder = timing  # type: ignore[attr-defined, misc]
        # ... and the sampler's one helper of its own (which predictions are c and u).
        split = engine.sampler.cond_and_uncond
        engine.sampler.cond_and_uncond = lambda *a: timed(lambda _self, *b: split(*b))(None, *a)  # type: ignore[attr-defined]


def bench_model(ref: str, args: argparse.Namespace) -> dict[str, float]:
    from engine.models import load_bundle
    from engine.request import GenerationRequest
    from engine.sampler import sample

    bundle = load_bundle(ref, device=args.device)
    base = GenerationRequest(
        prompt="a red circle on a blue background",
        model=ref,
        steps=args.steps,
        guidance=args.guidance,
        solver=args.solver,
        preview_every=0,
        decode_every=0,
    )
    on_step = (lambda _event: None) if args.live else None
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}

    def once(telemetry: bool, seed: int) -> float:
        started = time.process_time()
        result = sample(bundle, base.replace(telemetry=telemetry, seed=seed), on_step=on_step)
        cpu[telemetry].append(time.process_time() - started)
        assert (result.telemetry is not None) == telemetry
        return float(result.stats["seconds"])

    once(True, 0)  # warm-up: first-call allocations, lazy imports
    once(False, 0)
    _Timed.seconds = 0.0
    cpu[True].clear()
    cpu[False].clear()
    for r in range(args.repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        for telemetry in order:
            times[telemetry].append(once(telemetry, r))

    def ratios(values: dict[bool, list[float]]) -> tuple[float, float, float]:
        on, off = min(values[True]), min(values[False])
        return on, off, statistics.median(a / b for a, b in zip(values[True], values[False], strict=True))

    on, off, paired = ratios(times)
    cpu_on, cpu_off, cpu_paired = ratios(cpu)
    return {
        "on": on,
        "off": off,
        "paired": paired,
        "cpu_on": cpu_on,
        "cpu_off": cpu_off,
        "cpu_paired": cpu_paired,
        "inside": _Timed.seconds / sum(times[True]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="embedded,tiny", help="comma-separated: embedded, tiny, or a model path")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", default="cfg")
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--live", action="store_true", help="pass an on_step callback (rows moved every step)")
    args = parser.parse_args(argv)
    import torch

    from engine.models import ModelError

    torch.set_num_threads(args.threads)
    _Timed.install()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            ref = name
            if name == "tiny":
                from engine.models.tiny import build_tiny_sdxl

                ref = str(build_tiny_sdxl(Path(tmp) / "tiny-sdxl"))
            try:
                m = bench_model(ref, args)
            except ModelError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            mode = "live (on_step)" if args.live else "rows at the end"
            print(
                f"{name}: {args.guidance} {args.solver} {args.steps} steps on {args.device}, {mode}, "
                f"{args.repeats} interleaved pairs: fastest wall on {m['on'] * 1000:.1f} ms, off "
                f"{m['off'] * 1000:.1f} ms, ratio {m['on'] / m['off']:.4f} (median paired {m['paired']:.4f}); "
                f"fastest CPU on {m['cpu_on'] * 1000:.1f} ms, off {m['cpu_off'] * 1000:.1f} ms, ratio "
                f"{m['cpu_on'] / m['cpu_off']:.4f} (median paired {m['cpu_paired']:.4f}); inside the recorder "
                f"{100 * m['inside']:.2f} % of the on-runs' time",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
