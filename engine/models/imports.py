"""Importing only the library modules a run uses: packages whose `__init__` runs when a name is first needed.

Start-up of `tnr-lab generate` on a small model is nearly all imports (bench/startup.py), and a large share of
it is package `__init__` files that import a whole library so that `from pkg import Name` works:

- `diffusers.models.transformers`: every transformer model (reached from the UNet's blocks, which import
  `..transformers.transformer_2d` and `..transformers.dual_transformer_2d`);
- `diffusers.models.unets`: every UNet (reached from `unets.unet_2d_condition`);
- `diffusers.hooks`: every cache hook (reached from `diffusers.loaders.peft`, which needs one function of
  `hooks.group_offloading`); the lab needs the package itself only for a perturbed pass (perturb.py);
- `transformers.models`: a scan of every model folder (~560) for its names (reached from `models.clip` and
  from peft's constants);
- `scipy.stats`: every distribution (diffusers' schedulers `import scipy.stats` for beta sigmas; diffusers'
  single-file loader imports them all; the lab's beta schedule asks for it when it is used);
- `scipy.optimize`: every optimiser, with scipy.linalg, sparse, special and spatial under them (about 0.38 s of
  a 7 s `generate` here), reached from `transformers.modeling_utils` through its object-detection losses,
  which need one name: `from scipy.optimize import linear_sum_assignment`. A deferred package may serve such
  names from the submodule that defines them (`SERVED`) without running its `__init__`: the same object
  its `__init__` would import (`from ._lsap import linear_sum_assignment`), and any other name still runs it;
- `scipy.integrate`: every integrator (`from scipy import integrate` in diffusers' LMS scheduler, reached from
  the UNet's single-file mixin through `diffusers.schedulers`; it needs `integrate.quad` only when it runs),
  whose own submodules would ask scipy.optimize for more names.

Not `peft` (about 0.5 s, reached from `diffusers.loaders.lora_base` through the UNet's PEFT mixin, for one
class): tried, and its submodules import each other in an order only its own `__init__` gets right (a deferred
`peft` left `peft.config` partly initialised and the fallback could not recover), so it is imported as usual.

`import_deferring(load)` runs `load()` (ordinary imports: `from diffusers import UNet2DConditionModel`) after
placing each of these packages that is not imported yet in `sys.modules` as a *deferred package*: the real
package module object, made from its own spec with its own `__path__`, so its submodules import normally and
are set on it as usual, whose `__init__` has not run yet. The first time anyone asks it for a name it does
not have (`from pkg import Name`, `pkg.Name`, `import *`), the package's own `__init__` runs in that same
module object and the name is looked up again. Every module and class is the library's own object (the lazy
`diffusers.UNet2DConditionModel` resolves to the very class loaded here), nothing is copied or patched; the
one difference from a plain import is when a package's `__init__` runs, or that it never runs in a process
that does not need it. If `load()` fails in any way while packages are deferred (a library whose layout
changed, say), the packages deferred by the call are initialised and `load()` runs again, now a plain import
that raises the library's own error if it fails too: a new library version can cost start-up time, never
correctness. tests/test_startup.py holds both paths.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

# Parents before children. Only packages whose __init__ merely gathers submodules belong here (their
# submodules must not depend on it having run); see the module docstring for who reaches each one.
DEFERRED = (
    "diffusers.models.unets",
    "diffusers.models.transformers",
    "diffusers.hooks",
    "transformers.models",
    "scipy.stats",
    "scipy.integrate",
    "scipy.optimize",
)

# Names a deferred package hands out from the submodule that defines them, without its __init__ (checked: the
# object found there must be what the package's own __init__ imports under that name; tests/test_startup.py).
SERVED = {
    "scipy.optimize": {"linear_sum_assignment": "scipy.optimize._lsap"},
}

_STATE = "__tnr_lab_deferred__"  # on a deferred package: "pending", "running", "done" or "failed"
_LOCK = threading.RLock()  # one for all: the first use of a deferred package is rare and short


def is_deferred(module: object) -> bool:
    """Whether `module` is a package placed by `defer` whose `__init__` has not run yet."""
    return isinstance(module, ModuleType) and module.__dict__.get(_STATE) == "pending"


def pending_packages() -> list[str]:
    """The deferred packages of this process whose `__init__` has not run (yet)."""
    return sorted(name for name, module in list(sys.modules.items()) if is_deferred(module))


def _initialise(module: ModuleType) -> ModuleType:
    """Run a deferred package's own `__init__` in its module object (once); returns what `sys.modules` then
    holds under its name: the module itself, or what its `__init__` put there (transformers' lazy modules)."""
    name = module.__name__
    with _LOCK:
        if module.__dict__.get(_STATE) == "pending":
            module.__dict__[_STATE] = "running"
            # While its __init__ runs, a name it lacks is an AttributeError, as for any partly imported module;
            # a __getattr__ of the package's own comes with its code.
            module.__dict__.pop("__getattr__", None)
            try:
                module.__spec__.loader.exec_module(module)  # type: ignore[union-attr]
            except BaseException:
                # As a failed import leaves it: gone from sys.modules, so the next import tries again.
                module.__dict__[_STATE] = "failed"
                if sys.modules.get(name) is module:
                    del sys.modules[name]
                raise
            module.__dict__[_STATE] = "done"
            real = sys.modules.get(name)
            if real is not None and real is not module and "__getattr__" not in module.__dict__:
                # Its __init__ put another object in sys.modules (transformers' lazy modules do): whoever kept
                # this one (a parent's attribute) reaches that one's names through it.
                module.__dict__["__getattr__"] = lambda attribute: getattr(real, attribute)
    return sys.modules.get(name) or module


def _place(name: str) -> bool:
    """Put the package `name` in `sys.modules` as a deferred package. False when it is there already or
    cannot be deferred (not a package with an `__init__.py`, or not installed): it then imports as usual."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)  # imports the parent package (itself perhaps deferred)
    except (ImportError, ValueError, AttributeError):
        return False
    if (
        spec is None
        or spec.submodule_search_locations is None
        or not hasattr(spec.loader, "exec_module")
        or not str(spec.origin or "").endswith("__init__.py")
        or name in sys.modules  # the parent's import imported it
    ):
        return False
    module = importlib.util.module_from_spec(spec)  # __spec__, __path__, __file__, __loader__, __package__
    module.__dict__[_STATE] = "pending"

    served = SERVED.get(name, {})

    def __getattr__(attribute: str) -> Any:  # PEP 562: called only for names the module lacks
        if attribute in served and module.__dict__.get(_STATE) == "pending":
            try:
                value = getattr(importlib.import_module(served[attribute]), attribute)
            except (ImportError, AttributeError):
                pass  # another layout of the library: its __init__ below finds the name, or says it has none
            else:
                module.__dict__[attribute] = value  # as the __init__'s own `from .sub import name` would
                return value
        real = _initialise(module)
        if attribute in module.__dict__:
            return module.__dict__[attribute]
        if real is not module:
            return getattr(real, attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)  # as the import system does after importing a submodule
    return True


def defer(packages: Iterable[str] = DEFERRED) -> list[str]:
    """Place each of `packages` (parents before children) that is not imported yet as a deferred package;
    returns the names placed."""
    return [name for name in packages if _place(name)]


def initialise_deferred(names: Iterable[str] | None = None) -> None:
    """Run the `__init__` of deferred packages now (all pending ones, or those named, parents first)."""
    wanted = None if names is None else set(names)
    for name in pending_packages():  # sorted: a parent's name sorts before its children's
        module = sys.modules.get(name)
        if (wanted is None or name in wanted) and is_deferred(module):
            _initialise(module)  # type: ignore[arg-type]


def import_deferring(load: Callable[[], T], packages: Iterable[str] = DEFERRED) -> T:
    """`load()` with `packages` deferred (see the module docstring). If it raises, the packages deferred
    here are initialised and `load()` runs again as a plain import (its error, if any, is the library's)."""
    placed = defer(packages)
    try:
        return load()
    except Exception:
        if not placed:
            raise
        initialise_deferred(placed)
        return load()
