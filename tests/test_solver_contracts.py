"""What every registered solver promises (engine.units.SOLVERS: today's and any added later).

- the sampler counts exactly the model evaluations the unit plans (several step counts, guidance methods, grids
  with zero-length steps, eta large enough to reach sigma 0 early);
- its request round-trips through JSON; it appears in `tnr-lab generate --help` and `tnr-lab units`;
- run deterministically (eta 0 where it has eta), it converges at its declared `order` on a closed-form ODE;
- a re-run is bit-identical and another seed is another image; where it injects noise, the noise changes it;
- the cfg++ rule: with constant den != ren, a one-evaluation unit's first step is D + sigma_next ren (the
  published Euler/DDIM CFG++ step), and with den == ren nothing depends on ren's identity.
"""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_bundle import GaussianBundle, request

from engine.request import GenerationRequest
from engine.sampler import sample
from engine.solvers import Prediction, SolverContext, make_solver
from engine.units import SOLVERS

NAMES = SOLVERS.names()


def deterministic(name: str) -> dict:
    """The unit's settings with its noise off (eta 0) where it has any."""
    unit = SOLVERS.get(name)
    return {"eta": 0.0} if any(p.name == "eta" for p in unit.params) else {}


def has_eta(name: str) -> bool:
    return any(p.name == "eta" for p in SOLVERS.get(name).params)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 12])
@pytest.mark.parametrize(
    "guidance, tnr", [("none", False), ("cfg", False), ("cfg++", False), ("cfg++", True), ("tnr-cfg", False)]
)
def test_counted_evaluations_equal_the_plan(name: str, steps: int, guidance: str, tnr: bool) -> None:
    """Every guidance method rides every solver (cfg++ with TNR on too), at exactly the planned cost."""
    bundle = GaussianBundle()
    result = sample(bundle, request(solver=name, guidance=guidance, tnr=tnr, steps=steps, schedule="trailing", seed=1))
    per_call = 1 if guidance == "none" else 2
    assert result.stats["model_evaluations"] == result.stats["planned_evaluations"]
    assert sum(batch for _, _, batch in bundle.calls) == result.stats["model_evaluations"]
    assert len(bundle.calls) * per_call == result.stats["model_evaluations"]
    assert torch.isfinite(result.latent).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("eta", [None, 0.0, 3.0])
def test_evaluations_match_on_grids_with_zero_length_steps(name: str, eta: float | None) -> None:
    """A repeated sigma (trailing past T steps) and eta > 1 (sigma_down 0 before the end) are counted exactly."""
    if eta is not None and not has_eta(name):
        pytest.skip("no eta")
    sigmas = [14.6, 9.0, 9.0, 4.0, 1.5, 1.5, 1.5, 0.4, 0.0]
    settings = {} if eta is None else {"eta": eta}
    solver = make_solver(name, settings)
    calls = []

    def predict(x: torch.Tensor, s: float) -> Prediction:
        calls.append(s)
        e = s * x / (s**2 + 0.25)
        return Prediction(x, s, e, e)

    from engine.noise import NoiseSource

    noise = NoiseSource([3], (1, 4, 4, 4))
    ctx = SolverContext(sigmas=sigmas, predict=predict, noise=noise, true_noise=noise.true_noise)
    x = noise.true_noise * sigmas[0]
    planned = 0
    for i in range(len(sigmas) - 1):
        planned += solver.evaluations(i, sigmas)
        x = solver.step(ctx, x, i)
        assert len(calls) == planned, (i, calls)
        assert torch.isfinite(x).all(), i


@pytest.mark.parametrize("name", NAMES)
def test_request_round_trips_through_json(name: str) -> None:
    unit = SOLVERS.get(name)
    params = {}
    for p in unit.params:  # a value other than the default, where there is one
        if p.kind == "float":
            params[p.name] = float(p.default) / 2 if p.default else 0.5
        elif p.kind == "int":
            params[p.name] = max(int(p.minimum or 1), int(p.default) - 1)
        elif p.kind == "choice":
            params[p.name] = p.choices[-1]
    req = GenerationRequest(prompt="x", solver=name, solver_params=params, steps=9, discrete_timesteps=True)
    again = GenerationRequest.from_json(req.to_json())
    assert again == req and again.solver_params == params


def test_every_solver_is_in_the_cli_help_and_the_units_listing(capsys: pytest.CaptureFixture[str]) -> None:
    from tnr_tui.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert main(["units", "solvers"]) == 0
    listing = capsys.readouterr().out
    for name in NAMES:
        assert name in help_text, name
        assert f"\n{name}: " in f"\n{listing}", name
    assert "--eta ETA" in help_text and "--s-noise S_NOISE" in help_text and "--discrete-timesteps" in help_text


# ---- order on a closed-form ODE -----------------------------------------------------------------------------
# dx/dsigma = x^2 has x(sigma) = x_T / (1 + x_T (sigma_T - sigma)) (tests/test_solvers.py); as a model: eps = x^2,
# D = x - sigma x^2. The grid stops at sigma 0.5 (a step to 0 is first order by design for every solver).


def riccati_error(name: str, steps: int, sigma_T: float = 2.0, sigma_end: float = 0.5) -> float:
    x_T = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    sigmas = torch.linspace(sigma_T, sigma_end, steps + 1, dtype=torch.float64).tolist()
    solver = make_solver(name, deterministic(name))

    def predict(x: torch.Tensor, s: float) -> Prediction:
        e = x**2
        return Prediction(x, s, e, e)

    ctx = SolverContext(sigmas=sigmas, predict=predict)
    x = x_T
    for i in range(steps):
        x = solver.step(ctx, x, i)
    exact = x_T / (1 + x_T * (sigma_T - sigma_end))
    return float((x - exact).abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_solvers_converge_at_their_declared_order(name: str) -> None:
    # Past the pre-asymptotic range: the multistep units' first-order start dominates from about 40 steps on.
    steps = [40, 80, 160, 320]
    errors = [riccati_error(name, n) for n in steps]
    log_n = torch.tensor(steps, dtype=torch.float64).log()
    log_err = torch.tensor(errors, dtype=torch.float64).log()
    slope = float(((log_n - log_n.mean()) * (log_err - log_err.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum())
    assert slope == pytest.approx(-SOLVERS.get(name).order, abs=0.25), (name, slope, errors)


# ---- seeds and noise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_rerun_is_bit_identical_and_another_seed_differs(name: str) -> None:
    def run(seed: int, **kw) -> torch.Tensor:  # noqa: ANN003
        return sample(GaussianBundle(), request(solver=name, seed=seed, steps=6, guidance="cfg", **kw)).latent

    a, b, c = run(11), run(11), run(12)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    if has_eta(name):
        noisy = run(11, solver_params={"eta": 1.0})
        quiet = run(11, solver_params={"eta": 0.0})
        assert torch.equal(noisy, run(11, solver_params={"eta": 1.0}))
        assert not torch.allclose(noisy, quiet)


@pytest.mark.parametrize("name", [n for n in NAMES if has_eta(n)])
def test_eta_zero_draws_no_noise_and_s_noise_zero_injects_none(name: str) -> None:
    """With eta 0 a stochastic unit is its deterministic solver: the generator is never asked for more noise."""
    from engine.noise import NoiseSource

    drawn = []
    original = NoiseSource.normal

    def counting(self: NoiseSource) -> torch.Tensor:
        drawn.append(1)
        return original(self)

    NoiseSource.normal = counting  # type: ignore[method-assign]
    try:
        sample(GaussianBundle(), request(solver=name, steps=5, solver_params={"eta": 0.0}))
        assert drawn == []
        zero = sample(
            GaussianBundle(), request(solver=name, steps=5, solver_params={"eta": 1.0, "s_noise": 0.0})
        ).latent
        quiet = sample(GaussianBundle(), request(solver=name, steps=5, solver_params={"eta": 0.0})).latent
        if name in ("euler_ancestral", "ddim", "ddpm", "dpm_2_ancestral", "dpmpp_2s_ancestral", "res_multistep"):
            assert not torch.allclose(zero, quiet)  # s_noise 0 still steps to sigma_down (k-diffusion's meaning)
    finally:
        NoiseSource.normal = original  # type: ignore[method-assign]


# ---- cfg++ on every solver ------------------------------------------------------------------------------------


def first_step(name: str, den: torch.Tensor, ren: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    ctx = SolverContext(sigmas=[4.0, 2.0, 1.0, 0.0], predict=lambda x_, s: Prediction(x_, s, den, ren))
    return make_solver(name, deterministic(name)).step(ctx, x, 0)


@pytest.mark.parametrize("name", NAMES)
def test_cfg_pp_first_step_of_one_evaluation_solvers_is_the_published_ddim_step(name: str) -> None:
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    den, ren = torch.full_like(x, 0.5), torch.full_like(x, -0.25)
    if SOLVERS.get(name).stages == 1:
        # D + sigma_next ren: Chung et al. 2024's DDIM / Euler CFG++ (x0 from the guided eps, re-noised with u).
        torch.testing.assert_close(first_step(name, den, ren, x), (x - 4.0 * den) + 2.0 * ren)
    # Without cfg++ (den and ren the same tensor) every solver is its usual self: ren's identity is irrelevant.
    same = first_step(name, den, den, x)
    torch.testing.assert_close(same, first_step(name, den, den.clone(), x))
    assert math.isfinite(float(same.sum()))
