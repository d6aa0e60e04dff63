"""Whole-process start-up: `tnr-lab generate` beside diffusers' own minimal pipeline script, as subprocesses.

    python bench/startup.py [--model DIR] [--repeats 15] [--steps 4] [--size 64] [--threads 1]
                            [--importtime DIR] [--also-tree DIR]

Each side is a fresh interpreter that loads the model, generates one image of `--size` px in `--steps` Euler
+ CFG steps and writes a PNG: ours is the `tnr-lab generate` console script (history included, in a temporary
data directory), theirs is

    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(DIR, local_files_only=True)
    pipe(prompt, num_inference_steps=4, height=64, width=64, output_type="pil").images[0].save(OUT)

Without --model the tests' tiny random SDXL-topology model is built once (engine.models.tiny.build_tiny_sdxl),
so nearly all of both processes' time is starting up: importing torch, diffusers and transformers and loading
the parts. One warm-up run of each side is not counted (it creates the history and fills the page cache);
then the sides alternate, the order swapped every repeat (ABBA), so load drift on a shared machine hits both
alike. Both get the same torch thread count (OMP_NUM_THREADS). Prints per side the median wall seconds and
the median user+sys CPU seconds of the process (CPU time is less sensitive to other processes' load than wall
time), the ratios ours/diffusers of both (ratio of medians and median of the back-to-back pairs, with a 95% interval
for the latter and every pair's ratio), and the goal
(issue 11, item 6: wall ratio <= 0.8). Compiled modules are cached as an install caches them (the warm-up fills
the cache) unless --no-bytecode-cache. --importtime DIR also writes one `python -X importtime` log per side.
--also-tree DIR adds a third side, `tnr-lab generate` run from another checkout of the lab (PYTHONPATH=DIR,
e.g. `git worktree add /tmp/before HEAD~1`): before and after a change, measured in the same interleaved run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL = 0.8

DIFFUSERS_SCRIPT = r"""
import sys
from diffusers import StableDiffusionXLPipeline

model, prompt, steps, size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)
pipe(prompt, num_inference_steps=steps, height=size, width=size, output_type="pil").images[0].save(out)
"""

# The console script's own body, for a venv without the `tnr-lab` entry point next to the interpreter.
TNR_LAB_SCRIPT = "import sys; from tnr_tui.cli import main; sys.argv[0] = 'tnr-lab'; sys.exit(main())"


def tnr_lab_command() -> list[str]:
    script = Path(sys.executable).with_name("tnr-lab")
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", TNR_LAB_SCRIPT]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, user+sys CPU seconds) of one subprocess; raises with its stderr when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def top_imports(log: Path, n: int = 12) -> list[tuple[float, str]]:
    """The slowest top-level imports of a -X importtime log: (cumulative seconds, module)."""
    rows = []
    for line in log.read_text().splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if not name.startswith("  "):  # top level: one space after the bar
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:n]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of `values` (order statistics of the binomial(n, 1/2)):
    on this host a whole process's time varies by 30% within minutes, so a ratio's median says little
    without how far it could be off."""
    from math import comb

    ordered, n = sorted(values), len(values)
    if n < 6:
        return ordered[0], ordered[-1]
    # the largest k with P(B <= k - 1) <= (1 - confidence) / 2, B ~ binomial(n, 1/2): [x_(k), x_(n-k+1)]
    tail, k, cumulative = (1 - confidence) / 2, 0, 0.0
    while cumulative + comb(n, k) / 2**n <= tail:
        cumulative += comb(n, k) / 2**n
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a diffusers SDXL directory (default: a tiny random one, built now)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="width = height in pixels")
    parser.add_argument("--prompt", default="a red circle on a white background")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both sides (OMP_NUM_THREADS)")
    parser.add_argument("--importtime", type=Path, help="write one -X importtime log per side into this folder")
    parser.add_argument("--also-tree", type=Path, help="also time tnr-lab from this checkout (PYTHONPATH=DIR)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="compile every module at every start, as PYTHONDONTWRITEBYTECODE=1 makes Python do",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model
        if model is None:
            from engine.models.tiny import build_tiny_sdxl

            model = str(build_tiny_sdxl(tmp / "tiny-sdxl"))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TNR_LAB_HOME=str(tmp / "home"))
        env.pop("TNR_LAB_THREADS", None)  # tnr-lab then keeps OMP_NUM_THREADS, as diffusers does
        if not args.no_bytecode_cache:
            # Compiled modules kept (in the temporary directory), as an installed lab's and diffusers' own are,
            # even where PYTHONDONTWRITEBYTECODE is set (as on this project's machines): else every start of the
            # editable lab compiles its ~100 modules while site-packages' diffusers has its .pyc from pip.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        size, steps = str(args.size), str(args.steps)
        ours = [
            *tnr_lab_command(),
            "generate",
            "--model",
            model,
            "--prompt",
            args.prompt,
            "--steps",
            steps,
            "--width",
            size,
            "--height",
            size,
            "--scale",
            "5",  # diffusers' default guidance scale
            "--out",
            str(tmp / "ours.png"),
        ]
        theirs = [sys.executable, "-c", DIFFUSERS_SCRIPT, model, args.prompt, steps, size, str(tmp / "theirs.png")]
        sides = {"tnr-lab": ours, "diffusers": theirs}
        envs = {name: env for name in sides}
        if args.also_tree is not None:
            tree = args.also_tree.resolve()
            sides["tnr-lab@tree"] = [*ours[:-1], str(tmp / "tree.png")]
            envs["tnr-lab@tree"] = dict(env, PYTHONPATH=str(tree), TNR_LAB_HOME=str(tmp / "home-tree"))

        for name, command in sides.items():  # warm-up: the history's creation, the page cache
            timed(command, envs[name])
        walls: dict[str, list[float]] = {name: [] for name in sides}
        cpus: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.repeats):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for name in order:
                wall, cpu = timed(sides[name], envs[name])
                walls[name].append(wall)
                cpus[name].append(cpu)

        if args.importtime is not None:
            args.importtime.mkdir(parents=True, exist_ok=True)
            for name, command in sides.items():
                log = args.importtime / f"{name}.importtime.txt"
                done = subprocess.run(
                    [command[0], "-X", "importtime", *command[1:]], env=envs[name], capture_output=True, text=True
                )
                log.write_text(done.stderr)

    print(f"model {model}, {args.size}x{args.size}, euler + cfg 5, {args.steps} steps, {args.threads} torch thread(s)")
    print(f"{args.repeats} alternating repeats of each whole process (after one warm-up each)")
    for name in sides:
        print(
            f"{name:12} wall median {statistics.median(walls[name]):.3f} s (min {min(walls[name]):.3f}), "
            f"user+sys median {statistics.median(cpus[name]):.3f} s (min {min(cpus[name]):.3f})"
        )
    for ours_name in [name for name in sides if name != "diffusers"]:
        for label, values in (("wall", walls), ("user+sys", cpus)):
            ratio = statistics.median(values[ours_name]) / statistics.median(values["diffusers"])
            pairs = [o / d for o, d in zip(values[ours_name], values["diffusers"], strict=True)]
            paired = statistics.median(pairs)
            low, high = median_interval(pairs)
            print(
                f"ratio {ours_name}/diffusers, {label:8}: {ratio:.3f} (medians), {paired:.3f} (median of pairs, "
                f"95% interval {low:.3f}-{high:.3f}); pairs {sorted(round(p, 3) for p in pairs)}"
            )
    print(f"goal: wall ratio <= {GOAL}")
    if args.importtime is not None:
        for name in sides:
            log = args.importtime / f"{name}.importtime.txt"
            print(f"slowest top-level imports of {name} ({log}):")
            for seconds, module in top_imports(log):
                print(f"  {seconds:6.3f} s  {module}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
