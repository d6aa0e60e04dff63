"""`tnr-lab generate`: one image from the command line, recorded in the history.

The request is built and validated before anything heavy loads, so a bad flag costs milliseconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from engine import units
from tnr_tui.cli import THREADS_HELP, UserError
from tnr_tui.cli.unit_options import add_unit_options, names_help, unit_params

# CLI flag -> request field, parsed by engine.request.parse_field (one message format for CLI and TUI).
FIELD_FLAGS = {
    "model": "model",
    "negative": "negative_prompt",
    "solver": "solver",
    "guidance": "guidance",
    "scale": "scale",
    "steps": "steps",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "schedule": "schedule",
    "schedule_rho": "schedule_rho",
    "sigma_min": "guidance_sigma_min",
    "sigma_max": "guidance_sigma_max",
    "tnr_power": "tnr_power",
    "cfg_rescale": "cfg_rescale",
    "device": "device",
    "dtype": "dtype",
    "decode_every": "decode_every",
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate one image (recorded in the history)",
        description="Generate one image and record the run in the history.",
    )
    p.add_argument("--model", help="diffusers directory, .safetensors file, hub id, or 'embedded' (default)")
    p.add_argument("--prompt", help="the prompt (required unless --weighted prompts are given)")
    p.add_argument("--negative", help="the negative prompt")
    p.add_argument("--solver", help=names_help(units.SOLVERS, "euler"))
    p.add_argument("--guidance", help=names_help(units.GUIDANCE, "cfg"))
    p.add_argument("--scale", help="guidance scale (default: the method's own)")
    p.add_argument("--steps", help="sampling steps (default 20)")
    p.add_argument("--seed", help="seed of the true noise (default 0)")
    p.add_argument("--width", help="image width, a multiple of 8 (default: the model's)")
    p.add_argument("--height", help="image height, a multiple of 8 (default: the model's)")
    p.add_argument("--schedule", help="sigma schedule: " + names_help(units.SCHEDULES, "default"))
    p.add_argument("--schedule-rho", dest="schedule_rho", help="Karras rho / power-warp exponent (default: 7 / 1)")
    p.add_argument(
        "--discrete-timesteps",
        dest="discrete_timesteps",
        action="store_true",
        default=None,
        help="hand the model the nearest trained timestep (ComfyUI, diffusers' multistep schedulers) instead of "
        "the fractional one of log-sigma interpolation (k-diffusion, A1111; the default)",
    )
    p.add_argument(
        "--decode-every",
        dest="decode_every",
        help="decode the denoised estimate every N steps (kept with --keep-frames; default 0: the final image only)",
    )
    p.add_argument(
        "--keep-frames",
        dest="keep_frames",
        action="store_true",
        default=None,
        help="keep the run's trajectory in the history: the preview of every step and the decoded image of every "
        "--decode-every step (one animated PNG each; tnr-lab history show lists them)",
    )
    p.add_argument(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        default=None,
        help="record no per-step rows (tnr-lab history steps); the image is the same",
    )
    p.add_argument("--sigma-min", dest="sigma_min", help="guidance window: below this sigma, use the conditional eps")
    p.add_argument("--sigma-max", dest="sigma_max", help="guidance window: above this sigma, use the conditional eps")
    p.add_argument(
        "--tnr",
        action="store_true",
        default=None,
        help="True Noise Removal on the method's guided prediction: n + S (e - n) (cfg --tnr is tnr-cfg)",
    )
    p.add_argument("--tnr-power", dest="tnr_power", help="TNR exponent p (default 0.25)")
    p.add_argument(
        "--cfg-rescale",
        dest="cfg_rescale",
        help="CFG rescale phi in [0, 1] (default: the model's: tnr_lab.json, 0.7 at zero terminal SNR, else 0)",
    )
    p.add_argument(
        "--weighted",
        "--prompt-weight",
        dest="weighted",
        action="append",
        metavar="TEXT:SCALE",
        help="one prompt of the N-prompt form with its scale; repeat (at least twice)",
    )
    add_unit_options(p)
    add_model_options(p)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", help="auto (default), float32, float16, bfloat16")
    p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="N",
        help="N images, seeds S..S+N-1 (S = --seed), sampled in batches (one model call per stage for as many as "
        "the device's memory holds); each is its own history run and --out FILE.png becomes FILE-SEED.png",
    )
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--save-latent", dest="save_latent", help="also write the final latent (.safetensors, key 'latent')")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help="history location (as the global --data-dir)")
    p.set_defaults(func=run)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--lora (repeatable), --prediction-type, --zero-snr / --no-zero-snr: what a run asks of the model."""
    p.add_argument(
        "--lora",
        dest="lora",
        action="append",
        metavar="PATH[:WEIGHT]",
        help="a LoRA (.safetensors; kohya/A1111 or diffusers layout) with its weight (default 1); repeat for "
        "several; a bare NAME is looked up in $TNR_LAB_LORA_DIRS (needs peft: pip install 'tnr-lab[lora]')",
    )
    p.add_argument(
        "--prediction-type",
        dest="prediction_type",
        choices=("epsilon", "v_prediction"),
        help="override what the model predicts (a single file without a 'v_pred' key that is a v model)",
    )
    p.add_argument(
        "--zero-snr",
        dest="zero_snr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override zero terminal SNR (rescale_betas_zero_snr; turning it on samples trailing spacing)",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields of add_model_options' flags (only those given)."""
    from engine.loras import parse_lora_arg
    from engine.request import LoraSpec

    values: dict[str, Any] = {}
    if getattr(args, "lora", None):
        values["loras"] = tuple(LoraSpec(*parse_lora_arg(item)) for item in args.lora)
    if getattr(args, "prediction_type", None) is not None:
        values["prediction_type"] = args.prediction_type
    if getattr(args, "zero_snr", None) is not None:
        values["zero_snr"] = bool(args.zero_snr)
    return values


def model_message(bundle: Any, request: Any = None) -> str:
    """'sampling on cpu (float32): SD 2.x, v-prediction; LoRA style 0.8': what the run samples with.

    With a request, the model is first set up for it (bundle.configure: its LoRAs and overrides; the sampler
    does it again, at no cost), so the line says what the run really uses and a bad LoRA fails here."""
    configure = getattr(bundle, "configure", None)
    if request is not None and configure is not None:
        configure(request)
    text = f"sampling on {bundle.device} ({str(bundle.dtype).removeprefix('torch.')})"
    describe = getattr(bundle, "describe", None)
    if describe is not None:
        text += f": {describe()}"
    loras = getattr(bundle, "active_loras", None) or []
    if loras:
        text += "; " + ", ".join(f"LoRA {lora['name']} {lora['weight']:g}" for lora in loras)
    for note in getattr(bundle, "notes", ()):
        text += f"\nnote: {note}"
    return text


def parse_weighted(items: list[str]) -> list[tuple[str, float]]:
    from engine.request import RequestError, parse_field

    prompts = []
    for item in items:
        text, sep, scale = item.rpartition(":")
        if not sep or not text.strip():
            raise RequestError(f"--weighted expects TEXT:SCALE, got {item!r}")
        prompts.append((text, parse_field("scale", scale)))
    return prompts


def build_request(args: argparse.Namespace) -> Any:
    """The GenerationRequest of the flags; RequestError/UserError with a one-line message."""
    from engine.request import GenerationRequest, RequestError, parse_field

    values: dict[str, Any] = {}
    for flag, name in FIELD_FLAGS.items():
        text = getattr(args, flag, None)
        if text is not None:
            value = text if name in ("negative_prompt", "model") else parse_field(name, text)
            values[name] = value
    if getattr(args, "tnr", None):
        values["tnr"] = True
    if getattr(args, "discrete_timesteps", None):
        values["discrete_timesteps"] = True
    if getattr(args, "keep_frames", None):
        values["keep_frames"] = True
    if getattr(args, "telemetry", None) is False:
        values["telemetry"] = False
    values.update(model_options(args))
    weighted = parse_weighted(args.weighted or [])
    if weighted:
        values["prompts"] = tuple(weighted)
    if args.prompt is None and not weighted:
        raise RequestError("give --prompt TEXT (or at least two --weighted TEXT:SCALE prompts)")
    prompt = args.prompt if args.prompt is not None else weighted[0][0]
    try:
        values.update(unit_params(args, values.get("solver", "euler"), values.get("guidance", "cfg")))
    except units.UnitError as e:
        raise RequestError(str(e)) from None
    request = GenerationRequest(prompt=prompt, **values)
    if not units.GUIDANCE.get(request.guidance).uses_negative() and request.negative_prompt:
        print(f"tnr-lab: note: guidance {request.guidance} does not use the negative prompt", file=sys.stderr)
    return request


def check_paths(out: Path, save_latent: Path | None) -> None:
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must name a .png file, got {str(out)!r}")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    if save_latent is not None and save_latent.suffix.lower() != ".safetensors":
        raise UserError(f"--save-latent must name a .safetensors file, got {str(save_latent)!r}")
    if save_latent is not None and save_latent.is_dir():
        raise UserError(f"--save-latent {save_latent} is a directory")
    for path in (out, save_latent):
        if path is None:
            continue
        parent = path.parent if str(path.parent) else Path(".")
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write {path}: {parent} is not a directory")
        unwritable = _unwritable(parent)
        if unwritable is not None:
            raise UserError(f"cannot write {path}: {unwritable}")


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be written in `folder` (or the folders to be made in it), or None.

    Asked of the nearest folder that exists, by its metadata only (statvfs, access): a read-only or forbidden
    place is said before the model loads, not after sampling, when the copy failed and the run was recorded
    failed. A full disk cannot be told in advance; that copy's OSError is one line too."""
    import os

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"{existing} is on a read-only file system"
    except (OSError, AttributeError):  # no statvfs (Windows): access() below still answers
        pass
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing}: permission denied"
    return None


class ProgressBar:
    """A one-line progress bar on stderr, redrawn in place on a terminal, a few lines otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last_draw = 0.0
        self.last_quarter = -1
        self.drawn = False

    def message(self, text: str) -> None:
        from tnr_tui.services.text import visible  # a model name or path is user text: no raw control byte

        self.stream.write(f"{visible(text)}\n")
        self.stream.flush()

    def step(self, event: Any) -> None:
        done = event.index + 1
        fraction = done / event.steps
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        rate = event.elapsed / done if done else 0.0
        line = f"[{bar}] {done}/{event.steps} steps  {event.elapsed:.1f}s  {rate:.2f}s/step  sigma {event.sigma:.3f}"
        now = time.monotonic()
        if self.tty:
            if done == event.steps or now - self.last_draw > 0.1:
                self.stream.write("\r" + line)
                self.stream.flush()
                self.last_draw = now
                self.drawn = True
        else:  # a log file: a line at each quarter, not one per step
            quarter = int(fraction * 4)
            if quarter != self.last_quarter:
                self.last_quarter = quarter
                self.stream.write(line + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def run_request(
    request: Any, store: Any, *, out: Path | None, save_latent: Path | None, origin: str, parent_id: str | None = None
) -> Any:
    """Execute with a progress bar, turning engine errors into one-line user errors."""
    from engine.models import ModelError
    from engine.request import RequestError
    from engine.sampler import SamplingError
    from tnr_tui.services.history import HistoryError
    from tnr_tui.services.runs import execute

    bar = ProgressBar()
    bar.message(f"loading model {request.model} ...")
    notify_busy = getattr(store, "on_busy", None)

    def on_busy(message: str) -> None:
        bar.close()  # end the progress line first: the notice gets its own line
        if notify_busy is not None:
            notify_busy(message)

    store.on_busy = on_busy
    try:
        return execute(
            request,
            store,
            on_step=bar.step,
            out=out,
            save_latent=save_latent,
            origin=origin,
            parent_id=parent_id,
            on_model_loaded=lambda b: bar.message(model_message(b, request)),
        )
    except (ModelError, SamplingError, RequestError, HistoryError) as e:
        raise UserError(str(e).strip().splitlines()[0]) from None
    except OSError as e:
        raise UserError(f"cannot write {e.filename or 'output'}: {e.strerror or e}") from None
    finally:
        store.on_busy = notify_busy
        bar.close()


def run_seed_batch(request: Any, count: int, store: Any, out: Path, save_latent: Path | None, as_json: bool) -> int:
    """generate --batch N: seeds S..S+N-1 in batches (services.dispatch.seeds), one history run each."""
    from engine.models import ModelError, load_bundle
    from engine.request import RequestError
    from engine.sampler import SamplingError
    from tnr_tui.services.dispatch.seeds import run_seeds
    from tnr_tui.services.history import HistoryError
    from tnr_tui.services.text import visible

    bar = ProgressBar()
    bar.message(f"loading model {request.model} ...")
    try:
        bundle = load_bundle(request.model, device=request.device, dtype=request.dtype)
        bar.message(model_message(bundle, request))
        outcomes = run_seeds(
            request,
            count,
            store,
            bundle,
            out=out,
            save_latent=save_latent,
            on_batch=lambda done, total: bar.message(f"{done}/{total} images"),
        )
    except (ModelError, SamplingError, RequestError, HistoryError) as e:
        raise UserError(str(e).strip().splitlines()[0]) from None
    except OSError as e:
        raise UserError(f"cannot write {e.filename or 'output'}: {e.strerror or e}") from None
    failed = [o for o in outcomes if o.status != "done"]
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "run_id": o.run_id,
                        "seed": o.seed,
                        "status": o.status,
                        "image": str(o.image_path) if o.image_path else None,
                        "latent": str(o.latent_path) if o.latent_path else None,
                        "seconds": o.stats.get("seconds"),
                        "model_evaluations": o.stats.get("model_evaluations"),
                        "batch": o.stats.get("batch"),
                        "metrics": o.metrics,
                        "error": o.error or None,
                    }
                    for o in outcomes
                ],
                indent=2,
            )
        )
    else:
        for o in outcomes:
            if o.status == "done":
                size = (o.stats.get("batch") or {}).get("size", 1)
                print(
                    f"{visible(o.image_path)}  (run {o.run_id}, seed {o.seed}, {o.stats.get('seconds', 0.0):.2f} s "
                    f"in a batch of {size}, {o.stats.get('model_evaluations')} model evaluations)"
                )
            else:
                print(f"tnr-lab: error: seed {o.seed} (run {o.run_id}): {visible(o.error)}", file=sys.stderr)
    return 1 if failed else 0


def summary(outcome: Any, store: Any) -> dict[str, Any]:
    stats = outcome.stats
    return {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "image": str(outcome.image_path) if outcome.image_path else None,
        "latent": str(outcome.latent_path) if outcome.latent_path else None,
        "seconds": stats.get("seconds"),
        "seconds_per_step": stats.get("seconds_per_step"),
        "model_evaluations": stats.get("model_evaluations"),
        "steps": stats.get("steps"),
        "device": stats.get("device"),
        "dtype": stats.get("dtype"),
        "width": outcome.request.width,
        "height": outcome.request.height,
        "seed": outcome.request.seed,
        "metrics": outcome.metrics,
        "warnings": stats.get("warnings", []),
        "history": store.location,
    }


def run(args: argparse.Namespace) -> int:
    request = build_request(args)
    out = Path(args.out).expanduser()
    save_latent = Path(args.save_latent).expanduser() if args.save_latent else None
    check_paths(out, save_latent)

    from tnr_tui.cli.common import open_history
    from tnr_tui.services.text import visible
    from tnr_tui.services.threads import apply_cpu_threads

    try:
        apply_cpu_threads(getattr(args, "threads", None))
    except ValueError as e:
        raise UserError(str(e)) from None
    count = getattr(args, "batch", None)
    if count is not None and count < 1:
        raise UserError(f"--batch must be at least 1, got {count}")
    if count is not None and count > 1:
        from engine.request import MAX_SEED
        from tnr_tui.services.sweep.spec import MAX_SEEDS

        # Every seed's request is built before the first batch samples: a typo of a few digits filled the
        # memory for minutes. Said here, before the history or the model opens.
        if count > MAX_SEEDS:
            raise UserError(f"--batch makes at most {MAX_SEEDS} images (a sweep's seed limit), got {count}")
        if request.seed + count - 1 > MAX_SEED:
            raise UserError(
                f"--batch {count} from seed {request.seed} runs past the largest seed {MAX_SEED}; "
                f"give --seed {MAX_SEED - count + 1} or less"
            )
    if count is not None and count > 1 and getattr(request, "keep_frames", False):
        raise UserError("--keep-frames keeps one run's trajectory: give it without --batch")
    store = open_history(args)
    if count is not None and count > 1:
        try:
            return run_seed_batch(request, count, store, out, save_latent, args.json)
        finally:
            store.close()
    try:
        outcome = run_request(request, store, out=out, save_latent=save_latent, origin="cli")
        if outcome.status != "done":
            raise UserError(f"run {outcome.run_id} was {outcome.status}")
        for warning in outcome.stats.get("warnings", []):
            print(f"warning: {visible(warning)}", file=sys.stderr)
        if args.json:
            print(json.dumps(summary(outcome, store), indent=2))
        else:
            evaluations = outcome.stats.get("model_evaluations")
            print(
                f"{visible(outcome.image_path)}  (run {outcome.run_id}, {outcome.stats.get('seconds', 0.0):.1f} s, "
                f"{evaluations} model evaluations)"
            )
    finally:
        store.close()
    return 0
