"""Per-step telemetry (engine/telemetry.py): every column equals a value computed here, independently, from
the predictions the model actually returned (a hook on bundle.eps records every call), on the tiny fixture.

The test's own formulas: norms and the cosine with torch.linalg in float64 over the flattened latent, CFG and
TNR combined by hand, D = x - sigma den from the recorded x, APG's parts from its paper's projection, the
injected noise from the next step's input (x_next - x_down), PAG's term from the perturbed pass's output.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from engine.request import GenerationRequest
from engine.sampler import sample
from engine.solvers import make_solver
from engine.solvers.common import ancestral_step
from engine.telemetry import COLUMNS, Recorder, StepTable, TelemetryError

REL = 1e-6  # the recorder's float64 Gram matrix against torch.linalg in float64


@pytest.fixture(scope="module")
def bundle(tiny_sdxl_dir):
    from engine.models import load_bundle

    return load_bundle(str(tiny_sdxl_dir), device="cpu")


@pytest.fixture
def hooked(bundle, monkeypatch):
    """bundle with eps (and eps_perturbed) wrapped: every call's (x, sigma, output) is kept, in order."""
    calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    perturbed: list[torch.Tensor] = []
    eps, eps_perturbed = bundle.eps, bundle.eps_perturbed

    inside_perturbed = []

    def eps_hook(x, sigma, t, cond):
        out = eps(x, sigma, t, cond)
        if not inside_perturbed:  # the perturbed pass goes through eps too
            calls.append((x.detach().double().clone(), float(sigma), out.detach().double().clone()))
        return out

    def perturbed_hook(x, sigma, t, cond, perturbation):
        inside_perturbed.append(True)
        try:
            out = eps_perturbed(x, sigma, t, cond, perturbation)
        finally:
            inside_perturbed.pop()
        perturbed.append(out.detach().double().clone())
        return out

    monkeypatch.setattr(bundle, "eps", eps_hook)
    monkeypatch.setattr(bundle, "eps_perturbed", perturbed_hook)
    return bundle, calls, perturbed


def norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.double().flatten()))


def close(value, expected, what: str) -> None:
    assert value is not None, f"{what}: missing"
    assert math.isclose(value, expected, rel_tol=REL, abs_tol=1e-9), f"{what}: {value} != {expected}"


def first_calls(request: GenerationRequest, sigmas: list[float]) -> list[int]:
    """Index of each step's first model call (a call is one stage; the solver says how many per step)."""
    solver = make_solver(request.solver, request.solver_params)
    starts, at = [], 0
    for i in range(request.steps):
        starts.append(at)
        at += solver.evaluations(i, sigmas)
    return starts


def check_common(table: StepTable, calls, starts, dens, sigmas, request, result) -> None:
    """The columns every run has, against the recorded calls and the test's own den of each step."""
    assert len(table) == request.steps
    previous = None
    for i, row in enumerate(table.as_dicts()):
        x, sigma, out = calls[starts[i]]
        den = dens[i]
        assert row["index"] == i and row["sigma"] == sigmas[i] and row["sigma_next"] == sigmas[i + 1]
        assert sigma == sigmas[i]
        close(row["norm_guided"], norm(den), f"step {i} norm_guided")
        close(row["norm_x"], norm(x[0]), f"step {i} norm_x")
        close(row["std_x"], float(x[0].double().std()), f"step {i} std_x")
        D = x[0] - sigma * den
        if previous is None:
            assert row["x0_change"] is None
        else:
            # The engine's den is float32, ours float64, and D_i - D_(i-1) cancels about three digits late in a
            # run (x0_change ~ 3e-3): the rounding of den shows at ~1e-6 here.
            expected = norm(D - previous) / norm(D)
            assert math.isclose(row["x0_change"], expected, rel_tol=2e-5), f"step {i} x0_change"
        previous = D
    assert table.column("evaluations")[-1] == result.stats["model_evaluations"]


def test_cfg_rows_equal_the_predictions_recomputed(hooked):
    bundle, calls, _ = hooked
    request = GenerationRequest(prompt="a red circle", steps=4, guidance="cfg", scale=5.0, preview_every=0)
    result = sample(bundle, request)
    sigmas = result.stats["sigmas"]
    table = result.steps
    assert table.columns[: len(COLUMNS)] == COLUMNS
    starts = first_calls(request, sigmas)
    dens = []
    for i, row in enumerate(table.as_dicts()):
        _, _, out = calls[starts[i]]
        u, c = out[0], out[1]  # rows: [negative, prompt]
        d = c - u
        close(row["norm_cond"], norm(c), f"step {i} norm_cond")
        close(row["norm_uncond"], norm(u), f"step {i} norm_uncond")
        close(row["norm_diff"], norm(d), f"step {i} norm_diff")
        close(row["diff_ratio"], norm(d) / norm(u), f"step {i} diff_ratio")
        cos = float(torch.nn.functional.cosine_similarity(d.flatten(), u.flatten(), dim=0))
        close(row["cos_diff_uncond"], cos, f"step {i} cos_diff_uncond")
        assert row["tnr_factor"] is None
        assert row["timestep"] == result.stats["timesteps"][i]
        assert row["evaluations"] == 2 * (i + 1)
        dens.append(u + 5.0 * d)
    check_common(table, calls, starts, dens, sigmas, request, result)


def test_tnr_cfg_on_heun_rows_use_the_first_stage_and_s(hooked):
    bundle, calls, _ = hooked
    request = GenerationRequest(
        prompt="a blue square", steps=4, guidance="tnr-cfg", scale=3.0, solver="heun", preview_every=0
    )
    result = sample(bundle, request)
    sigmas = result.stats["sigmas"]
    n = result.true_noise[0].double()  # deterministic solver: the true noise stays the start noise
    starts = first_calls(request, sigmas)
    assert len(calls) == starts[-1] + 1  # heun: two stages, one at the last step
    dens = []
    for i, row in enumerate(result.steps.as_dicts()):
        S = 2.0 - (1.0 / (1.0 + sigmas[i + 1] ** 2)) ** 0.25
        close(row["tnr_factor"], S, f"step {i} tnr_factor")
        _, _, out = calls[starts[i]]
        u, c = out[0], out[1]
        close(row["norm_diff"], norm(c - u), f"step {i} norm_diff")
        dens.append(n + S * (u + 3.0 * (c - u) - n))
    assert result.stats["tnr_factors"] == result.steps.column("tnr_factor")
    check_common(result.steps, calls, starts, dens, sigmas, request, result)


def test_apg_and_ancestral_noise_extras(hooked):
    bundle, calls, _ = hooked
    g, r = 4.0, 15.0
    request = GenerationRequest(
        prompt="a green triangle", steps=4, guidance="apg", scale=g, solver="euler_ancestral", preview_every=0, seed=3
    )
    result = sample(bundle, request)
    sigmas = result.stats["sigmas"]
    table = result.steps
    assert {"apg_parallel", "apg_orthogonal", "noise_injected"} <= set(table.columns)
    dens = []
    for i, row in enumerate(table.as_dicts()):
        x, sigma, out = calls[i]
        u, c = out[0], out[1]
        d = c - u
        d = d * min(1.0, r / norm(d))
        unit = c / norm(c)
        parallel = float((d * unit).sum()) * unit
        orthogonal = d - parallel
        close(row["apg_parallel"], norm(parallel), f"step {i} apg_parallel")
        close(row["apg_orthogonal"], norm(orthogonal), f"step {i} apg_orthogonal")
        den = u + g * (orthogonal + parallel)  # eta 1
        dens.append(den)
        down, up = ancestral_step(sigma, sigmas[i + 1], 1.0)
        if i + 1 < request.steps:
            x_down = x[0] - sigma * den + down * den
            injected = calls[i + 1][0][0] - x_down  # the next step's input minus the deterministic move
            assert math.isclose(row["noise_injected"], norm(injected), rel_tol=1e-5), i
            # ... which is sigma_up times a standard normal draw: about sigma_up sqrt(n) long
            assert 0.5 < row["noise_injected"] / (up * math.sqrt(x[0].numel())) < 1.5
        else:
            assert row["noise_injected"] is None  # the step to sigma 0 injects nothing
    check_common(table, calls, list(range(request.steps)), dens, sigmas, request, result)


def test_pag_perturbed_term_where_the_perturbed_pass_runs(hooked):
    bundle, calls, perturbed = hooked
    s = 2.0
    request = GenerationRequest(
        prompt="a yellow circle",
        steps=4,
        guidance="pag",
        scale=3.0,
        guidance_params={
            "perturbed_guidance_scale": s,
            "perturbed_guidance_start": 0.2,
            "perturbed_guidance_stop": 0.8,
        },
        preview_every=0,
    )
    result = sample(bundle, request)
    terms = result.steps.column("perturbed_term")
    # diffusers' strict window int(0.2 * 4) < i < int(0.8 * 4): steps 1 and 2
    assert [t is not None for t in terms] == [False, True, True, False]
    assert len(perturbed) == 2
    for k, i in enumerate((1, 2)):
        c = calls[i][2][1]
        close(terms[i], norm(s * (c - perturbed[k][0])), f"step {i} perturbed_term")


def test_telemetry_off_keeps_the_latent_bit_identical_and_records_nothing(bundle):
    for guidance, solver, params in [
        ("apg", "euler_ancestral", {}),
        ("pag", "dpmpp_2m_sde", {"perturbed_guidance_start": -1.0}),
        ("tnr-cfg", "dpm_2_ancestral", {}),
    ]:
        request = GenerationRequest(
            prompt="a red square", steps=3, guidance=guidance, solver=solver, guidance_params=params, preview_every=0
        )
        on = sample(bundle, request)
        off = sample(bundle, request.replace(telemetry=False))
        assert off.telemetry is None and off.steps is None and on.steps is not None
        assert torch.equal(on.latent, off.latent), (guidance, solver)


def test_step_events_carry_the_rows_the_result_keeps(bundle):
    events = []
    request = GenerationRequest(prompt="a red circle", steps=3, guidance="cfg", preview_every=0)
    result = sample(bundle, request, on_step=events.append)
    assert [e.rows[0] for e in events] == result.steps.as_dicts()
    off = []
    sample(bundle, request.replace(telemetry=False), on_step=off.append)
    assert all(e.rows == [] for e in off)


def test_n_prompt_form_takes_the_first_prompt_as_u(hooked):
    bundle, calls, _ = hooked
    request = GenerationRequest(
        prompt="a red circle",
        prompts=(("blurry", -1.0), ("a red circle", 4.0)),
        steps=2,
        guidance="cfg",
        preview_every=0,
    )
    result = sample(bundle, request)
    for i, row in enumerate(result.steps.as_dicts()):
        u, c = calls[i][2][0], calls[i][2][1]
        close(row["norm_uncond"], norm(u), "u is the first prompt")
        close(row["norm_cond"], norm(c), "c is the request's prompt")


def test_a_batch_gets_one_row_per_image():
    """The recorder over a batch of two: each image's row equals that image recorded alone."""
    g = torch.Generator().manual_seed(0)
    x, den, c, u, extra = (torch.randn(2, 4, 6, 5, generator=g) for _ in range(5))
    together = Recorder(batch=2)
    alone = [Recorder(batch=1) for _ in range(2)]
    for step in range(2):
        shift = 0.1 * step
        for rec, k in [(together, slice(0, 2)), (alone[0], slice(0, 1)), (alone[1], slice(1, 2))]:
            rec.first_stage(
                index=step,
                sigma=3.0 - step,
                sigma_next=2.0 - step,
                timestep=900.0,
                tnr_factor=None,
                x=(x + shift)[k],
                den=(den - shift)[k],
                cond=c[k],
                uncond=u[k],
                extras={"mine": extra[k], "scalar": 2.5},
            )
            rec.end_step(2 * (step + 1), {"per_image": torch.tensor([1.0, 2.0])[k]})
    tables = together.tables()
    assert len(tables) == 2
    for image in range(2):
        single = alone[image].tables()[0]
        assert tables[image].columns == single.columns
        for a, b in zip(tables[image].rows, single.rows, strict=True):
            for va, vb in zip(a, b, strict=True):
                assert va == vb or math.isclose(va, vb, rel_tol=1e-12)
        row = tables[image].row(1)
        close(row["mine"], norm(extra[image]), "a tensor extra is its norm")
        assert row["scalar"] == 2.5 and row["per_image"] == float(image + 1)


def test_step_table_round_trips_and_refuses_malformed_data():
    table = StepTable(("index", "sigma", "x"), ((0, 14.5, None), (1, 3.25, 0.5)))
    assert StepTable.from_dict(table.to_dict()) == table
    assert table.column("x") == [None, 0.5] and table.row(1) == {"index": 1, "sigma": 3.25, "x": 0.5}
    out = io.StringIO()
    table.write_csv(out)
    assert out.getvalue() == "index,sigma,x\n0,14.5,\n1,3.25,0.5\n"
    assert StepTable(("a",), ((float("nan"),),)).rows == ((None,),)
    for bad in [
        {"columns": ["a", "a"], "rows": []},
        {"columns": ["a"], "rows": [[1, 2]]},
        {"columns": ["a"], "rows": [["x"]]},
        {"columns": "a", "rows": []},
        {"format": 9, "columns": [], "rows": []},
        [1, 2],
    ]:
        with pytest.raises(TelemetryError):
            StepTable.from_dict(bad)
