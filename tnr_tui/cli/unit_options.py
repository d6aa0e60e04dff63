"""The units' part of the command line, read from the registries (engine.units): choices and help for
--solver, --guidance and --schedule, the units' parameters as --solver-param / --guidance-param NAME=VALUE
(repeatable) and the dedicated flags some parameters declare (--eta, --s-noise). Torch-free.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine import units

PARAM_OPTIONS = (
    ("solver_params", units.SOLVERS, "--solver-param"),
    ("guidance_params", units.GUIDANCE, "--guidance-param"),
)


def names_help(registry: units.Registry[Any], default: str) -> str:
    names = [f"{n} (default)" if n == default else n for n in registry.names()]
    return ", ".join(names) + f" ('tnr-lab units {registry.package.rsplit('.', 1)[-1]}' describes each)"


def dedicated_flags(registry: units.Registry[Any]) -> dict[str, units.Param]:
    """flag -> the parameter it sets, over every unit of the registry (one meaning per flag)."""
    flags: dict[str, units.Param] = {}
    for unit in registry:
        for param in unit.params:
            if param.flag:
                known = flags.get(param.flag)
                if known is not None and known.name != param.name:
                    raise ValueError(f"{param.flag} means {known.name} and {param.name}")
                flags.setdefault(param.flag, param)
    return flags


def add_unit_options(p: argparse.ArgumentParser) -> None:
    """--solver-param, --guidance-param and the dedicated flags, on a parser that has --solver/--guidance."""
    p.add_argument(
        "--solver-param",
        dest="solver_params",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter of the solver (repeat for more; 'tnr-lab units solvers' lists them)",
    )
    p.add_argument(
        "--guidance-param",
        dest="guidance_params",
        action="append",
        metavar="NAME=VALUE",
        help="a parameter of the guidance method, as diffusers' guider names it (repeat for more)",
    )
    for _, registry, _ in PARAM_OPTIONS:
        for flag, param in dedicated_flags(registry).items():
            p.add_argument(flag, dest=f"flag_{param.name}", metavar=param.name.upper(), help=param.help)


def unit_params(args: argparse.Namespace, solver: str, guidance: str) -> dict[str, dict[str, Any]]:
    """{"solver_params": {...}, "guidance_params": {...}} from the flags; UnitError naming what is wrong."""
    chosen = {"solver_params": (units.SOLVERS, solver), "guidance_params": (units.GUIDANCE, guidance)}
    result: dict[str, dict[str, Any]] = {}
    for field, (registry, name) in chosen.items():
        if name not in registry:
            result[field] = {}
            continue  # the request names the unknown unit
        unit = registry.get(name)
        params = {p.name: p for p in unit.params}
        option = dict((f, o) for f, _, o in PARAM_OPTIONS)[field]
        values: dict[str, Any] = {}
        for flag, param in dedicated_flags(registry).items():
            text = getattr(args, f"flag_{param.name}", None)
            if text is None:
                continue
            if param.name not in params:
                raise units.UnitError(f"{flag}: the {registry.kind} {name!r} has no {param.name} parameter")
            values[param.name] = params[param.name].parse(text)
        for item in getattr(args, field, None) or []:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise units.UnitError(f"{option} expects NAME=VALUE, got {item!r}")
            if key not in params:
                takes = ", ".join(params) or "no parameters"
                raise units.UnitError(f"{option} {key}: the {registry.kind} {name!r} takes {takes}")
            values[key] = params[key].parse(text)
        result[field] = values
    return result


def describe(registry: units.Registry[Any]) -> str:
    """The `tnr-lab units` listing of one registry."""
    lines = []
    for unit in registry:
        extra = []
        if getattr(unit, "aliases", ()):
            extra.append("also " + ", ".join(unit.aliases))
        if registry is units.SOLVERS:
            extra.append(f"{unit.family}, order {unit.order}, {unit.stages} evaluation(s) per step")
        if registry is units.GUIDANCE:
            extra.append(f"predictions: {', '.join(unit.kinds)}")
            if unit.uses_scale:
                extra.append(f"default scale {unit.default_scale:g}")
        lines.append(f"{unit.name}: {unit.summary}" + (f" [{'; '.join(extra)}]" if extra else ""))
        for param in unit.params:
            flag = f" ({param.flag})" if param.flag else ""
            lines.append(f"    {param.describe()}{flag}")
    return "\n".join(lines)
