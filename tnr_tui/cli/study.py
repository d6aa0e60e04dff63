"""`tnr-lab study`: measure the seed's claims about TNR (tables in study.md, PNG plots)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from tnr_tui.cli import UserError

# The defaults of --sections, --samplers and --methods (services.study.design's; repeated here so that
# `tnr-lab study --help` imports no torch).
SECTIONS_DEFAULT = ("claims", "solvers", "samplers", "guidance")
SAMPLERS_DEFAULT = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_sde",
    "uni_pc",
    "ddim",
    "lms",
)
METHODS_DEFAULT = ("cfg", "cfg++", "tnr-cfg", "apg", "cfg-zero-star", "pag")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what}: {text!r} are not whole numbers") from None
    if not values or min(values) < 1:
        raise UserError(f"{what}: give whole numbers of at least 1, e.g. 5,10,20")
    return values


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this study (written into study.md)."""
    parts = ["tnr-lab", "study", "--model", args.model, "--samples", str(args.samples), "--steps", str(args.steps)]
    parts += ["--budgets", args.budgets, "--solvers", args.solvers, "--threads", str(args.threads)]
    if args.schedule != "default":
        parts += ["--schedule", args.schedule]
    if args.sections != ",".join(SECTIONS_DEFAULT):
        parts += ["--sections", args.sections]
    if args.skip:
        parts += ["--skip", args.skip]
    for name, default in (
        ("samplers", ",".join(SAMPLERS_DEFAULT)),
        ("methods", ",".join(METHODS_DEFAULT)),
        ("sampler_budget", None),
        ("search_samples", 32),
        ("pag_scales", "1,3"),
        ("pag_layers", "auto"),
    ):
        value = getattr(args, name)
        if value is not None and value != default:
            parts += ["--" + name.replace("_", "-"), str(value)]
    if args.scales:
        parts += ["--scales", *args.scales]
    for prompt in args.prompt:
        parts += ["--prompt", prompt]
    for lora in getattr(args, "lora", None) or []:
        parts += ["--lora", lora]
    for name in ("width", "height", "clip_model", "batch"):
        if getattr(args, name, None) is not None:
            parts += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    parts += ["--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def set_cpu_threads(bundle: object, threads: int) -> None:
    """Pin torch's CPU threads for a CPU model (see --threads); the count is checked as the lab's is."""
    from tnr_tui.services.threads import choose_cpu_threads

    try:
        chosen = choose_cpu_threads(threads)  # 0 -> None (torch's default); bounds as for the lab and generate
    except ValueError as e:
        raise UserError(str(e)) from None
    if chosen and getattr(getattr(bundle, "device", None), "type", "cpu") == "cpu":
        import torch

        torch.set_num_threads(chosen)


def prepare_out_dir(out: str) -> Path:
    """The --out folder of a sweep or study, created now: a file in its place or no permission is a user error
    before any model loads."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {path}: {e.strerror or e}") from None
    return path


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device, --threads, --dtype and --clip-model, shared by `study` and `sweep`."""
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a busy machine two threads that wait for each other ran 5-30x "
        "slower than one; 0 keeps torch's default); ignored on a GPU",
    )
    p.add_argument("--dtype", default="auto")
    p.add_argument("--clip-model", default=None, metavar="DIR", help="a local CLIP model directory: add a CLIP score")


def add_dispatch_options(p: argparse.ArgumentParser) -> None:
    """--batch and --ray (with --ray-workers), shared by `study` and `sweep` (services.dispatch)."""
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="N",
        help="images per batched model call (seeds of one configuration; default: as many as the device's memory "
        "holds, at most 32; 1 samples one image at a time)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="run the images on Ray workers, one per device, each loading the model once: 'local' starts a "
        "cluster on this host for the run (loopback only), 'auto' (the default) joins this host's cluster, or a "
        "cluster's address; needs pip install -e '.[ray]'",
    )
    p.add_argument(
        "--ray-workers",
        dest="ray_workers",
        type=int,
        default=None,
        metavar="N",
        help="number of Ray workers (default: one per GPU, or the cluster's CPUs / --threads)",
    )


def check_dispatch_options(args: argparse.Namespace) -> None:
    """Bad --batch / --ray-workers values, and --ray without Ray installed: one line each, before any model loads."""
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise UserError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    if args.ray is None:
        if args.ray_workers is not None:
            raise UserError("--ray-workers needs --ray")
        return
    import importlib.util

    from tnr_tui.services.dispatch.ray_driver import INSTALL_HINT

    if importlib.util.find_spec("ray") is None:
        raise UserError(INSTALL_HINT)


def ray_dispatcher(args: argparse.Namespace, model: str):  # -> RayDispatcher (services.dispatch.ray_driver)
    """The Ray workers of --ray, loaded and ready; a DispatchError is a user error (one line)."""
    from tnr_tui.services.dispatch import DispatchError
    from tnr_tui.services.dispatch.ray_driver import RayDispatcher

    try:
        return RayDispatcher(
            args.ray,
            model,
            device=args.device,
            dtype=args.dtype,
            threads=args.threads or 1,
            workers=args.ray_workers,
            log=lambda line: print(line, file=sys.stderr),
        )
    except DispatchError as e:
        raise UserError(str(e)) from None


def dispatcher_or_bundle(args: argparse.Namespace, model: str) -> tuple[Any, Any]:
    """(the Ray workers of --ray, None), else (None, the model loaded here on --device with --threads); a
    model that does not load is one line (study and sweep)."""
    if args.ray is not None:
        return ray_dispatcher(args, model), None
    from engine.models import ModelError, load_bundle

    try:
        bundle = load_bundle(model, device=args.device, dtype=args.dtype)
    except ModelError as e:
        raise UserError(str(e)) from None
    set_cpu_threads(bundle, args.threads)
    return None, bundle


def check_lora_files(loras: tuple[tuple[str, float], ...]) -> None:
    """Each LoRA file is there, not pickled and readable: one line naming the file, before any model loads."""
    if not loras:
        return
    from engine.models.lora import LoraError, check_lora_file, resolve_lora_path

    for path, _ in loras:
        try:
            check_lora_file(resolve_lora_path(path))
        except LoraError as e:
            raise UserError(str(e)) from None


def apply_loras(bundle: object, loras: tuple[tuple[str, float], ...]) -> None:
    """Load the LoRAs into the model now (each run's request sets them again, at no cost): a LoRA of another
    family, with wrong shapes, or without peft installed is one line before anything samples. (With --ray the
    workers load them: check_lora_files is what is checked here.)"""
    set_loras = getattr(bundle, "set_loras", None)
    if not loras or set_loras is None:
        return
    from engine.models import ModelError
    from engine.request import LoraSpec

    try:
        set_loras(tuple(LoraSpec(path, weight) for path, weight in loras))
    except ModelError as e:
        raise UserError(str(e)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="measure TNR against none, cfg, cfg++, apg, cfg-zero-star and pag, on the common samplers, with "
        "bootstrap intervals; write study.md",
        description=(
            "Sample every arm of the study over the same seeds, then write DIR/study.md (tables with 95 % paired "
            "bootstrap intervals), DIR/study.json and PNG plots. Sections: claims (the notebook's: none vs tnr; "
            "cfg, cfg++ and tnr-cfg over a scale range; the difference term from the telemetry rows), solvers "
            "(euler, heun and rk4 at equal model evaluations with and without tnr), samplers (the common samplers "
            "with none, tnr, cfg, cfg++ and tnr-cfg at equal model evaluations) and guidance (cfg, cfg++, tnr-cfg, "
            "apg, cfg-zero-star and pag at their best settings and equal model evaluations, pag also at equal "
            "steps, and apg --tnr vs apg). The samplers and guidance sections take each method's setting from a "
            "scale search on other seeds (90001, ...). On the embedded model and a 2-core CPU the whole study at "
            "64 seeds took 20 minutes, batched (claims + solvers alone about 6; docs/study/study.md has the "
            "measured times): --skip samplers,guidance gives the notebook's study. Study images are not recorded "
            "in the history."
        ),
    )
    p.add_argument("--model", default="embedded", help="model directory, .safetensors file or 'embedded'")
    p.add_argument("--samples", type=int, default=32, help="seeds per arm (default 32)")
    p.add_argument("--steps", type=int, default=20, help="steps of the single- and two-prediction arms (default 20)")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS_DEFAULT),
        metavar="LIST",
        help="sections to run, comma-separated (default all: " + ",".join(SECTIONS_DEFAULT) + ")",
    )
    p.add_argument("--skip", default="", metavar="LIST", help="sections to leave out (e.g. samplers,guidance)")
    p.add_argument(
        "--budgets",
        default="5,10,20",
        help="evaluation budgets of the solver comparison, in Euler one-prediction steps (default 5,10,20)",
    )
    p.add_argument(
        "--scales",
        nargs="+",
        default=[],
        metavar="METHOD=V,...",
        help="scale ranges (default cfg=1.5,3,5,7.5 cfg++=0.2,0.4,0.6,0.8,1 tnr-cfg=1.5,3,5,7.5 "
        "apg=1.5,3,5,7.5,10 cfg-zero-star=1.5,3,5,7.5 pag=1.5,3,5): section 2's arms and the grids the scale "
        "search tries; a method left out keeps its default range",
    )
    p.add_argument("--solvers", default="euler,heun,rk4", help="solvers compared (default euler,heun,rk4)")
    p.add_argument(
        "--schedule",
        default="default",
        help="sigma schedule of every arm (default: the model's own spacing; 'trailing' starts every grid at the "
        "top noise level, whatever the step count)",
    )
    p.add_argument(
        "--samplers",
        default=",".join(SAMPLERS_DEFAULT),
        metavar="LIST",
        help="samplers of the samplers section (default " + ",".join(SAMPLERS_DEFAULT) + ")",
    )
    p.add_argument(
        "--sampler-budget",
        dest="sampler_budget",
        type=int,
        default=None,
        metavar="N",
        help="the samplers section's budget: the model evaluations of N Euler steps (N for one prediction, 2N for "
        "two; default --steps)",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS_DEFAULT),
        metavar="LIST",
        help="guidance methods of the guidance section, each needing a scale grid (default "
        + ",".join(METHODS_DEFAULT)
        + ")",
    )
    p.add_argument(
        "--search-samples",
        dest="search_samples",
        type=int,
        default=32,
        metavar="N",
        help="seeds of the scale search (90001..90000+N, never the reported ones; default 32)",
    )
    p.add_argument(
        "--pag-scales",
        dest="pag_scales",
        default="1,3",
        metavar="V,...",
        help="pag's perturbed_guidance_scale values the search tries with each of its scales (default 1,3)",
    )
    p.add_argument(
        "--pag-layers",
        dest="pag_layers",
        default="auto",
        metavar="LAYERS",
        help="self-attention layers pag perturbs, as the PAG pipelines name them (default auto: down_blocks.1 on "
        "the embedded model, whose 2x2 mid block barely changes under identity attention; mid elsewhere)",
    )
    p.add_argument("--prompt", action="append", default=[], help="prompts for models without a checker (repeatable)")
    p.add_argument(
        "--lora",
        dest="lora",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT]",
        help="a LoRA every arm samples with (.safetensors; kohya/A1111 or diffusers layout), its weight default 1; "
        "repeat for several; a bare NAME is looked up in $TNR_LAB_LORA_DIRS (needs peft: pip install 'tnr-lab[lora]')",
    )
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    add_device_options(p)
    add_dispatch_options(p)
    p.add_argument("--keep-images", action="store_true", help="also save every image under DIR/images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from engine import units
    from engine.request import SOLVERS, validate_field
    from tnr_tui.services.study import StudyConfig, StudyError
    from tnr_tui.services.sweep import SweepError, parse_list, parse_scales

    args.schedule = units.SCHEDULES.canonical(args.schedule) or args.schedule  # "Karras": A1111's name
    for name in ("device", "dtype", "width", "height", "schedule"):
        message = validate_field(name, getattr(args, name))
        if message:
            raise UserError(message)
    check_dispatch_options(args)
    from engine.units import GUIDANCE
    from tnr_tui.services.study import SECTIONS

    try:
        scales = {**StudyConfig().scales, **parse_scales(args.scales)}
        solvers = parse_list(args.solvers, SOLVERS, "solver", units.SOLVERS)
        sections = parse_list(args.sections, SECTIONS, "section")
        skipped = parse_list(args.skip, SECTIONS, "section") if args.skip.strip() else ()
        samplers = parse_list(args.samplers, SOLVERS, "sampler", units.SOLVERS)
        scaled = tuple(u.name for u in GUIDANCE if u.uses_scale)
        methods = parse_list(args.methods, scaled, "guidance method (with a scale)", units.GUIDANCE)
    except SweepError as e:
        raise UserError(str(e)) from None
    sections = tuple(s for s in sections if s not in skipped)
    if not sections:
        raise UserError("--skip leaves no section to run")
    if args.pag_layers != "auto":
        from engine.guidance.base import LayerParam

        message = LayerParam("perturbed_guidance_layers", "mid", kind="text").check(args.pag_layers)
        if message:
            raise UserError(f"--pag-layers: {message}")
    try:
        pag_scales = tuple(float(v) for v in args.pag_scales.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--pag-scales: {args.pag_scales!r} are not numbers") from None
    from engine.loras import parse_lora_arg

    loras = tuple(parse_lora_arg(item) for item in args.lora or [])
    try:
        cfg = StudyConfig(
            samples=args.samples,
            scales=scales,
            solvers=solvers,
            steps=args.steps,
            budgets=_ints(args.budgets, "budgets"),
            model=args.model,
            prompts=tuple(args.prompt),
            width=args.width,
            height=args.height,
            schedule=args.schedule,
            sections=sections,
            samplers=samplers,
            sampler_budget=args.sampler_budget,
            rivals=methods,
            search_samples=args.search_samples,
            pag_scales=pag_scales,
            pag_layers=args.pag_layers,
            loras=loras,
        )
    except StudyError as e:
        raise UserError(str(e)) from None
    check_lora_files(loras)

    from tnr_tui.services.study import run_study

    out = prepare_out_dir(args.out)
    dispatcher, bundle = dispatcher_or_bundle(args, cfg.model)
    if bundle is not None:
        apply_loras(bundle, loras)
    clip_model = Path(args.clip_model) if args.clip_model else None
    from tnr_tui.services.dispatch import DispatchError

    try:
        report = run_study(
            cfg,
            out,
            bundle=bundle,
            keep_images=args.keep_images,
            clip_model=clip_model,
            command=command_line(args),
            started=started,
            batch=args.batch,
            dispatcher=dispatcher,
        )
    except (StudyError, DispatchError) as e:
        raise UserError(str(e)) from None
    finally:
        if dispatcher is not None:
            dispatcher.close()
    print(f"study: {report.images} images in {report.seconds:.0f} s ({report.seconds / 60:.1f} min)")
    if report.times:
        from tnr_tui.services.study.tables import _times

        print(f"time: {_times(report.times)}")
    print(f"tables: {report.markdown}")
    if report.json is not None:
        print(f"numbers: {report.json}")
    for plot in report.plots:
        print(f"plot: {plot}")
    for warning in report.run_warnings + report.warnings:  # plot failures were logged too; repeated last
        print(f"warning: {warning}", file=sys.stderr)
    return 0
