"""Units and their registries (ARCHITECTURE.md, "Units and registries").

A solver, a guidance method and a schedule are each one module of `engine/solvers/`, `engine/guidance/` or
`engine/schedules/` that declares itself with a class: its name, aliases (A1111's names), parameters with
defaults and bounds, what it costs per step, and the code that does the work. The request, the CLI's
choices and help, the TUI's drop-downs and fields, the history's filters, A1111 metadata, sweep and study
budgets and plot colours all read these registries; nothing else lists units.

Torch-free to import: unit modules touch tensors only through their methods and import torch (or kornia,
torchsde) inside the functions that need it, so that the TUI can build its panels and validate requests
before the heavy libraries load. `tests/test_rooms.py` holds every unit module to that.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar


class UnitError(ValueError):
    """A unit name or parameter is invalid; the message is meant for the user as is."""


# ---- parameters -------------------------------------------------------------------------------------------

PARAM_KINDS = ("float", "int", "bool", "choice", "text")


@dataclass(frozen=True)
class Param:
    """One knob of a unit: what the CLI's --solver-param/--guidance-param, the TUI's fields and the request's
    parameter dicts accept. `default` None with `optional` means "the unit decides" (e.g. a momentum that is off)."""

    name: str
    default: Any
    kind: str = "float"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False
    help: str = ""
    a1111: str | None = None  # the field's name in A1111's parameters text, where it has one
    flag: str | None = None  # a dedicated CLI flag besides NAME=VALUE, e.g. "--eta"

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"parameter {self.name}: kind {self.kind!r} is not one of {PARAM_KINDS}")

    def check(self, value: Any) -> str | None:
        """The message for an invalid value, or None."""
        if value is None:
            return None if self.optional else f"{self.name} needs a value"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"{self.name} must be true or false, got {value!r}"
        if self.kind in ("choice", "text"):
            if not isinstance(value, str):
                return f"{self.name} must be text, got {value!r}"
            if self.kind == "choice" and value not in self.choices:
                return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{self.name} must be a number, got {value!r}"
        if self.kind == "int" and not isinstance(value, int):
            return f"{self.name} must be a whole number, got {value!r}"
        if not math.isfinite(float(value)):
            return f"{self.name} must be a finite number, got {value!r}"
        if self.minimum is not None and value < self.minimum:
            return f"{self.name} must be at least {self.minimum:g}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name} must be at most {self.maximum:g}, got {value!r}"
        return None

    def parse(self, text: str) -> Any:
        """A value from text (a CLI argument, a TUI field, A1111 metadata); UnitError with the reason."""
        text = text.strip()
        if text == "" or text.lower() == "none":
            if self.optional:
                return None
            raise UnitError(f"{self.name} needs a value")
        value: Any
        if self.kind == "bool":
            lowered = text.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise UnitError(f"{self.name} must be true or false, got {text!r}")
            value = lowered in ("1", "true", "yes", "on")
        elif self.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise UnitError(f"{self.name} must be a whole number, got {text!r}") from None
        elif self.kind == "float":
            try:
                value = float(text)
            except ValueError:
                raise UnitError(f"{self.name} must be a number, got {text!r}") from None
        else:
            value = text
        message = self.check(value)
        if message:
            raise UnitError(message)
        return value

    def describe(self) -> str:
        """One line for --help and the TUI: the name, the default and the range."""
        bounds = ""
        if self.kind == "choice":
            bounds = f" ({'|'.join(self.choices)})"
        elif self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else f"{self.minimum:g}"
            hi = "" if self.maximum is None else f"{self.maximum:g}"
            bounds = f" [{lo}..{hi}]"
        default = "off" if self.default is None else f"{self.default}"
        return f"{self.name}={default}{bounds}: {self.help}" if self.help else f"{self.name}={default}{bounds}"


def resolve_params(unit: Any, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The unit's parameters with defaults filled in; UnitError naming an unknown or invalid one."""
    params: tuple[Param, ...] = getattr(unit, "params", ())
    known = {p.name: p for p in params}
    given = dict(given or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        names = ", ".join(known) or "none"
        raise UnitError(f"{unit.kind} {unit.name!r} has no parameter {', '.join(unknown)} (it takes: {names})")
    resolved = {}
    for name, param in known.items():
        value = given.get(name, param.default)
        message = param.check(value)
        if message:
            raise UnitError(f"{unit.kind} {unit.name!r}: {message}")
        resolved[name] = value
    return resolved


# ---- registries -------------------------------------------------------------------------------------------

U = TypeVar("U")


class Registry(Generic[U]):
    """The units of one kind, filled by importing every module of their package (on first use)."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._units: dict[str, type[U]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, unit: type[U]) -> type[U]:
        """Class decorator: add a unit under its `name` and `aliases` (aliases match case-insensitively)."""
        name = unit.name  # type: ignore[attr-defined]
        if name in self._units and self._units[name] is not unit:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        unit.kind = self.kind  # type: ignore[attr-defined]
        self._units[name] = unit
        for alias in (name, *getattr(unit, "aliases", ())):
            self._aliases[alias.lower()] = name
        return unit

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
            self._loaded = True

    def names(self) -> tuple[str, ...]:
        """Every unit's name in menu order (`rank`, then name)."""
        self._load()
        units = sorted(self._units.values(), key=lambda u: (getattr(u, "rank", 100), u.name))  # type: ignore[attr-defined]
        return tuple(u.name for u in units)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[type[U]]:
        return (self._units[name] for name in self.names())

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name in self._units

    def canonical(self, name_or_alias: str) -> str | None:
        """The unit name an alias (A1111's "DPM++ 2M", any case) stands for, or None."""
        self._load()
        return self._aliases.get(name_or_alias.strip().lower())

    def get(self, name: str) -> type[U]:
        """The unit class of a name (not an alias); UnitError listing the choices otherwise."""
        self._load()
        unit = self._units.get(name)
        if unit is None:
            hint = self.canonical(name) if isinstance(name, str) else None
            also = f" (did you mean {hint!r}?)" if hint else ""
            raise UnitError(f"unknown {self.kind} {name!r}{also}; choose one of: {', '.join(self.names())}")
        return unit

    def colour(self, name: str) -> str:
        """A plot colour per unit, fixed by its menu position (so every unit has one, however many there are)."""
        names = self.names()
        index = names.index(name) if name in names else len(names)
        return PALETTE[index % len(PALETTE)]


# Tableau's 10 colours, then 10 darker ones: distinct at a glance, stable across runs.
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#0b3c5d",
    "#a34700",
    "#15601b",
    "#7a1315",
    "#4b2d6b",
    "#4a2b25",
    "#8a3d74",
    "#3d3d3d",
    "#63630f",
    "#0c6a75",
)

SOLVERS: Registry[Any] = Registry("solver", "engine.solvers")
GUIDANCE: Registry[Any] = Registry("guidance method", "engine.guidance")
SCHEDULES: Registry[Any] = Registry("schedule", "engine.schedules")
