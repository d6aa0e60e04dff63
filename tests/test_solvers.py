"""Solvers as Butcher tableaus over the direction-pair move (MATH.md 3-4)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.solvers import EULER, HEUN, MIDPOINT, RK4, TABLEAUS, pair_move, rk_step, tableau_for_step

# The test ODE dx/dsigma = x^2 has the closed form x(sigma) = x_T / (1 + x_T (sigma_T - sigma)). (The Gaussian-data
# ODE below is linear, and explicit midpoint happens to converge at order 3 on it, hiding its true order 2.)


def riccati_error(solver: str, steps: int, sigma_T: float = 2.0) -> float:
    """Max error after `steps` uniform steps in sigma from sigma_T to 0, every step with the solver's tableau."""
    x_T = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    grid = torch.linspace(sigma_T, 0.0, steps + 1, dtype=torch.float64).tolist()
    x = x_T
    for sigma, sigma_next in zip(grid[:-1], grid[1:], strict=True):
        x, _ = rk_step(TABLEAUS[solver], lambda x_stage, s, stage: (x_stage**2, x_stage**2), x, sigma, sigma_next)
    return float((x - x_T / (1 + x_T * sigma_T)).abs().max())


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_each_solver_converges_at_its_order(solver: str, order: int) -> None:
    steps = [8, 16, 32, 64]
    errors = [riccati_error(solver, n) for n in steps]
    log_n = torch.tensor(steps, dtype=torch.float64).log()
    log_err = torch.tensor(errors, dtype=torch.float64).log()
    # Least-squares slope of log error against log steps.
    slope = float(((log_n - log_n.mean()) * (log_err - log_err.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum())
    assert slope == pytest.approx(-order, abs=0.15), (solver, errors)


# Data ~ N(0, S_D^2): the exact eps is sigma x / (sigma^2 + S_D^2) and the probability-flow ODE
# dx/dsigma = eps has the closed form x(sigma) = x_T * sqrt(sigma^2 + S_D^2) / sqrt(sigma_T^2 + S_D^2).
S_D = 0.5


def test_rk4_follows_the_gaussian_probability_flow() -> None:
    sigma_T, sigma_end = 14.6, 0.3
    x_T = torch.linspace(-3, 3, 7, dtype=torch.float64) * sigma_T
    grid = torch.linspace(sigma_T, sigma_end, 33, dtype=torch.float64).tolist()
    x = x_T
    for sigma, sigma_next in zip(grid[:-1], grid[1:], strict=True):
        x, _ = rk_step(RK4, lambda x_stage, s, stage: (s * x_stage / (s**2 + S_D**2),) * 2, x, sigma, sigma_next)
    exact = x_T * math.sqrt(sigma_end**2 + S_D**2) / math.sqrt(sigma_T**2 + S_D**2)
    assert float((x - exact).abs().max()) < 2e-3


def test_tableaus_are_consistent() -> None:
    for tableau in TABLEAUS.values():
        assert sum(tableau.b) == pytest.approx(1.0)
        for i, row in enumerate(tableau.a):
            assert len(row) == i
            assert sum(row) == pytest.approx(tableau.c[i])  # row sums equal c: stages sit on the line
    assert [t.stages for t in (EULER, HEUN, MIDPOINT, RK4)] == [1, 2, 2, 4]


def test_pair_move_is_euler_when_den_equals_ren() -> None:
    x, e = torch.tensor([1.0, -2.0]), torch.tensor([0.3, 0.7])
    torch.testing.assert_close(pair_move(x, 2.0, 1.5, (e, e)), x + (1.5 - 2.0) * e)
    den, ren = torch.tensor([0.5, 0.5]), torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(pair_move(x, 2.0, 1.5, (den, ren)), x - 2.0 * den + 1.5 * ren)


def test_heun_stages_follow_the_pair_move() -> None:
    """Stage 2 sits at sigma_next on the Euler move of stage 1's pair; the step moves with the mean pair."""
    visits: list[tuple[torch.Tensor, float]] = []
    pairs = [(torch.tensor([1.0]), torch.tensor([0.0])), (torch.tensor([3.0]), torch.tensor([2.0]))]

    def pair_at(x: torch.Tensor, s: float, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        visits.append((x.clone(), s))
        return pairs[stage]

    x = torch.tensor([10.0])
    x_next, first = rk_step(HEUN, pair_at, x, 4.0, 2.0)
    assert [s for _, s in visits] == [4.0, 2.0]
    torch.testing.assert_close(visits[1][0], x - 4.0 * 1.0 + 2.0 * 0.0)
    torch.testing.assert_close(x_next, x - 4.0 * 2.0 + 2.0 * 1.0)  # den mean 2, ren mean 1
    assert first is pairs[0]


def test_rk4_stage_sigmas_interpolate_in_sigma() -> None:
    seen: list[float] = []

    def pair_at(x: torch.Tensor, s: float, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(s)
        return torch.zeros(1), torch.zeros(1)

    rk_step(RK4, pair_at, torch.zeros(1), 3.0, 1.0)
    assert seen == [3.0, 2.0, 2.0, 1.0]


def test_step_to_zero_is_euler_whatever_the_solver() -> None:
    assert all(tableau_for_step(name, 0.0) is EULER for name in TABLEAUS)
    assert tableau_for_step("rk4", 0.1) is RK4
