"""The solvers: one module per solver kind, each registering its units with `engine.units.SOLVERS`.

Importing this package is torch-free. `engine.units.SOLVERS` lists every unit (it imports the modules here on
first use); the names below are the building blocks that tests and tools use directly.
"""

from __future__ import annotations

from engine.solvers.base import Pair, Prediction, Solver, SolverContext, make_solver
from engine.solvers.runge_kutta import (
    EULER,
    HEUN,
    MIDPOINT,
    RK4,
    TABLEAUS,
    Tableau,
    pair_move,
    rk_step,
    stage_sigma,
    tableau_for_step,
    weighted_pair,
)

__all__ = [
    "EULER",
    "HEUN",
    "MIDPOINT",
    "RK4",
    "TABLEAUS",
    "Pair",
    "Prediction",
    "Solver",
    "SolverContext",
    "Tableau",
    "make_solver",
    "pair_move",
    "rk_step",
    "stage_sigma",
    "tableau_for_step",
    "weighted_pair",
]
