"""`tnr-lab sweep`: a grid of runs (prompts x methods x scales x solvers x seeds), a CSV and contact sheets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tnr_tui.cli import UserError
from tnr_tui.cli.study import (
    add_device_options,
    add_dispatch_options,
    check_dispatch_options,
    dispatcher_or_bundle,
    prepare_out_dir,
)

DEFAULT_METHODS = "none,tnr,cfg,cfg++,tnr-cfg"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of prompts, guidance methods, scales, solvers and seeds; write a CSV and contact sheets",
        description=(
            "Run every combination as an ordinary history run tagged with the sweep's id, then write DIR/sweep.csv "
            "(one row per image: parameters, model evaluations, metrics, the checker's verdicts on the embedded "
            "model) and one contact sheet PNG per prompt. Re-running the same command resumes: cells already done "
            "are skipped."
        ),
    )
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for several)")
    p.add_argument("--negative-prompt", default="", metavar="TEXT")
    p.add_argument("--guidance", default=DEFAULT_METHODS, metavar="LIST", help=f"methods (default {DEFAULT_METHODS})")
    p.add_argument(
        "--scales",
        nargs="+",
        default=[],
        metavar="METHOD=V,...",
        help="scales per scaled method, e.g. cfg=3,5,7 cfg++=0.4,0.8 tnr-cfg=3,5 (default: each method's default)",
    )
    p.add_argument("--solvers", default="euler", metavar="LIST", help="solvers, e.g. euler,heun,rk4 (default euler)")
    p.add_argument("--steps", type=int, default=20, help="steps (the reference with --match-evaluations; default 20)")
    p.add_argument(
        "--match-evaluations",
        action="store_true",
        help="give each solver/method the steps that spend the model evaluations of --steps Euler steps with one "
        "prediction (Heun costs 2 per step, RK4 4, two-prediction methods double; the last step is Euler)",
    )
    p.add_argument("--seeds", default="1-4", help="seeds, e.g. 1-16 or 1,2,5-8 (default 1-4)")
    p.add_argument("--model", default="embedded", help="model directory, .safetensors file or 'embedded'")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--schedule", default="default")
    from tnr_tui.cli.generate import add_model_options

    add_model_options(p)  # --lora (every cell), --prediction-type, --zero-snr
    p.add_argument(
        "--lora-axis",
        dest="lora_axis",
        action="append",
        metavar="SET",
        help="one row variant of the LoRA axis: PATH[:WEIGHT][+PATH[:WEIGHT]...] or 'none'; repeat, e.g. "
        "--lora-axis none --lora-axis style.safetensors:0.5 --lora-axis style.safetensors:1 (on top of --lora)",
    )
    p.add_argument(
        "--guidance-param",
        dest="guidance_params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a guidance parameter for every method of the sweep that takes it (repeat); 'tnr-lab units guidance'",
    )
    p.add_argument(
        "--solver-param",
        dest="solver_params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a solver parameter for every solver of the sweep that takes it (repeat), e.g. eta=0.5",
    )
    add_device_options(p)
    add_dispatch_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="where the CSV and contact sheets go")
    p.add_argument(
        "--resume",
        default=None,
        metavar="ID",
        help="continue sweep ID (its arguments are read from DIR/sweep.json when no --prompt is given)",
    )
    p.set_defaults(func=run)


def build_spec(args: argparse.Namespace):  # -> SweepSpec (kept lazy-typed: importing sweep is cheap anyway)
    from engine.request import GUIDANCE_METHODS, SCHEDULES, SOLVERS, validate_field
    from tnr_tui.services.sweep import SweepError, SweepSpec, parse_list, parse_scales, parse_seeds

    out = Path(args.out)
    if not args.prompt:
        if args.resume is None:
            raise UserError("give at least one --prompt (or --resume ID with the sweep's --out DIR)")
        manifest = out / "sweep.json"
        if not manifest.is_file():
            raise UserError(f"cannot resume {args.resume}: {manifest} does not exist; give the sweep's arguments")
        try:
            saved = json.loads(manifest.read_text())
            spec = SweepSpec.from_dict(saved["spec"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read {manifest}: {e}") from None
        if saved.get("sweep") != args.resume:
            raise UserError(f"{manifest} holds sweep {saved.get('sweep')}, not {args.resume}")
        return spec
    from engine import units

    args.schedule = units.SCHEDULES.canonical(args.schedule) or args.schedule  # "Karras": A1111's name
    if args.schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {args.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    for name in ("width", "height", "steps"):
        message = validate_field(name, getattr(args, name)) if getattr(args, name) is not None else None
        if message:
            raise UserError(message)
    try:
        return SweepSpec(
            prompts=tuple(args.prompt),
            methods=parse_list(args.guidance, GUIDANCE_METHODS, "guidance method", units.GUIDANCE),
            scales=parse_scales(args.scales),
            solvers=parse_list(args.solvers, SOLVERS, "solver", units.SOLVERS),
            steps=args.steps,
            match_evaluations=args.match_evaluations,
            seeds=parse_seeds(args.seeds),
            model=args.model,
            negative_prompt=args.negative_prompt,
            width=args.width,
            height=args.height,
            schedule=args.schedule,
            guidance_params=unit_param_values(args.guidance_params, "guidance"),
            solver_params=unit_param_values(args.solver_params, "solver"),
            **lora_options(args),
        )
    except SweepError as e:
        raise UserError(str(e)) from None


def unit_param_values(items: list[str], kind: str) -> dict:
    """NAME=VALUE items of --guidance-param / --solver-param, each parsed by the first unit that declares it."""
    from engine import units

    registry = units.GUIDANCE if kind == "guidance" else units.SOLVERS
    declared = {p.name: p for u in registry for p in u.params}
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"--{kind}-param expects NAME=VALUE, got {item!r}")
        if key not in declared:
            raise UserError(f"--{kind}-param {key}: no {kind} takes it ('tnr-lab units' lists them)")
        try:
            values[key] = declared[key].parse(text)
        except units.UnitError as e:
            raise UserError(str(e)) from None
    return values


def lora_options(args: argparse.Namespace) -> dict:
    """SweepSpec's LoRA and prediction fields from --lora, --lora-axis, --prediction-type and --zero-snr."""
    from engine.loras import parse_lora_arg

    values: dict = {}
    if getattr(args, "lora", None):
        values["loras"] = tuple(parse_lora_arg(item) for item in args.lora)
    sets = []
    for item in getattr(args, "lora_axis", None) or []:
        if item.strip().lower() == "none":
            sets.append(())
            continue
        parts = [p for p in item.split("+") if p.strip()]
        if not parts:
            raise UserError(f"--lora-axis {item!r}: give PATH[:WEIGHT][+PATH[:WEIGHT]...] or 'none'")
        sets.append(tuple(parse_lora_arg(p.strip()) for p in parts))
    if sets:
        values["lora_sets"] = tuple(dict.fromkeys(sets))
    if getattr(args, "prediction_type", None) is not None:
        values["prediction_type"] = args.prediction_type
    if getattr(args, "zero_snr", None) is not None:
        values["zero_snr"] = bool(args.zero_snr)
    return values


def run(args: argparse.Namespace) -> int:
    from engine.request import validate_field

    for name in ("device", "dtype"):
        message = validate_field(name, getattr(args, name))
        if message:
            raise UserError(message)
    check_dispatch_options(args)
    spec = build_spec(args)

    from tnr_tui.cli.common import open_history
    from tnr_tui.services.dispatch import DispatchError
    from tnr_tui.services.sweep import SweepError, run_sweep

    out = prepare_out_dir(args.out)
    store = open_history(args)
    dispatcher, bundle = dispatcher_or_bundle(args, spec.model)
    try:
        report = run_sweep(
            spec,
            out,
            store,
            sweep_id=args.resume,
            bundle=bundle,
            device=args.device,
            dtype=args.dtype,
            clip_model=Path(args.clip_model) if args.clip_model else None,
            batch=args.batch,
            dispatcher=dispatcher,
        )
    except (SweepError, DispatchError) as e:
        raise UserError(str(e)) from None
    finally:
        if dispatcher is not None:
            dispatcher.close()
    print(
        f"sweep {report.sweep_id}: {report.ran} run, {report.skipped} already done, {report.failed} failed "
        f"of {report.total} in {report.seconds:.1f} s"
    )
    print(f"csv: {report.csv_path}")
    for sheet in report.sheets:
        print(f"sheet: {sheet}")
    return 1 if report.failed else 0
