"""Samplers against the published algorithms written out here (k-diffusion's and ComfyUI's loops), the noise
rules (per-step normals, the Brownian tree), the true-noise tracking TNR uses, and what CFG++ and TNR do to a
multistep solver's history (docs/MATH.md 9).

The "model" is closed-form: data N(0, S^2), so D(x, sigma) = x S^2 / (sigma^2 + S^2), in float64.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from gaussian_bundle import GaussianBundle, request

from engine.noise import BrownianNoise, NoiseSource
from engine.sampler import make_true_noise, sample
from engine.solvers import Prediction, SolverContext, make_solver
from engine.solvers.common import ancestral_step

S2 = 0.3
SHAPE = (1, 4, 3, 3)
SIGMAS = [14.6, 7.1, 3.3, 1.4, 0.55, 0.18, 0.0]


def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * S2 / (sigma**2 + S2)


def predict(x: torch.Tensor, sigma: float) -> Prediction:
    e = (x - denoise(x, sigma)) / sigma
    return Prediction(x, sigma, e, e)


def run_ours(
    name: str, settings: dict, seed: int = 5, sigmas: list[float] = SIGMAS
) -> tuple[torch.Tensor, NoiseSource]:
    noise = NoiseSource([seed], SHAPE)
    solver = make_solver(name, settings)
    ctx = SolverContext(sigmas=sigmas, predict=predict, noise=noise, true_noise=noise.true_noise.double())
    x = noise.true_noise.double() * sigmas[0]
    for i in range(len(sigmas) - 1):
        x = solver.step(ctx, x, i)
    return x, noise


def generator_noise(seed: int = 5) -> tuple[torch.Tensor, callable]:
    """The true noise and a k-diffusion noise sampler drawing the next normals of the same generator."""
    g = torch.Generator("cpu").manual_seed(seed)
    n = torch.randn(SHAPE, generator=g, dtype=torch.float32)
    return n, lambda sigma, sigma_next: torch.randn(SHAPE, generator=g, dtype=torch.float32).double()


def kdiffusion_brownian(seed: int, sigmas: list[float]):
    """k-diffusion's BrownianTreeNoiseSampler with ComfyUI's float32 CPU times, written out with torchsde."""
    import torchsde

    f32 = [torch.tensor(s, dtype=torch.float32) for s in sigmas if s > 0]
    t0, t1 = min(f32), max(f32)
    tree = torchsde.BrownianTree(t0, torch.zeros(SHAPE), t1, entropy=seed)

    def sampler(sigma: float, sigma_next: float) -> torch.Tensor:
        a, b = torch.tensor(sigma, dtype=torch.float32), torch.tensor(sigma_next, dtype=torch.float32)
        low, high, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchsde's end-rounding warnings (engine/noise.py)
            w = tree(max(low, t0), min(high, t1)) * sign
        return (w / (b - a).abs().sqrt()).double()

    return sampler


# ---- the published loops --------------------------------------------------------------------------------------


def kd_dpmpp_2s_ancestral(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        d_ = denoise(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + (x - d_) / sigmas[i] * (down - sigmas[i])
        else:
            t, t_next = -math.log(sigmas[i]), -math.log(down)
            h = t_next - t
            s = t + h / 2
            x_2 = (math.exp(-s) / math.exp(-t)) * x - math.expm1(-h / 2) * d_
            d_2 = denoise(x_2, math.exp(-s))
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * d_2
        if sigmas[i + 1] > 0 and up > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def kd_dpmpp_sde(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        d_ = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + (x - d_) / sigmas[i] * (0 - sigmas[i])
            continue
        t, t_next = -math.log(sigmas[i]), -math.log(sigmas[i + 1])
        h = t_next - t
        s = t + h / 2
        sd, su = ancestral_step(math.exp(-t), math.exp(-s), eta)
        s_ = -math.log(sd)
        x_2 = (math.exp(-s_) / math.exp(-t)) * x - math.expm1(t - s_) * d_
        x_2 = x_2 + noise_sampler(sigmas[i], math.exp(-s)) * s_noise * su
        d_2 = denoise(x_2, math.exp(-s))
        sd, su = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
        t_next_ = -math.log(sd)
        x = (math.exp(-t_next_) / math.exp(-t)) * x - math.expm1(t - t_next_) * d_2
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


def kd_dpmpp_3m_sde(x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        d_ = denoise(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = d_
        else:
            h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * d_
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (d_ - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (d_ - d_1) / (h_1 / h)
            if eta:
                x = (
                    x
                    + noise_sampler(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * math.sqrt(-math.expm1(-2 * h * eta))
                    * s_noise
                )
        d_1, d_2, h_1, h_2 = d_, d_1, h, h_1
    return x


def comfy_ipndm(x, sigmas):
    buffer: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        d_ = denoise(x, sigmas[i])
        d_cur = (x - d_) / sigmas[i]
        order = min(4, i + 1)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = d_
        elif order == 1:
            x = x + dt * d_cur
        elif order == 2:
            x = x + dt * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x = x + dt * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x = x + dt * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer = (buffer + [d_cur])[-3:]
    return x


def kd_lms(x, sigmas, order=4):
    from scipy import integrate

    ds = []
    for i in range(len(sigmas) - 1):
        d_ = denoise(x, sigmas[i])
        ds = (ds + [(x - d_) / sigmas[i]])[-order:]
        cur = min(i + 1, order)

        def coeff(j, cur=cur, i=i):
            def fn(tau):
                prod = 1.0
                for k in range(cur):
                    if j != k:
                        prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
                return prod

            return integrate.quad(fn, sigmas[i], sigmas[i + 1], epsrel=1e-12, epsabs=1e-14)[0]

        x = x + sum(coeff(j) * d for j, d in enumerate(reversed(ds)))
    return x


def comfy_res_multistep(x, sigmas, noise_sampler, eta=0.0, s_noise=1.0):
    old_denoised = None
    for i in range(len(sigmas) - 1):
        d_ = denoise(x, sigmas[i])
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0 or old_denoised is None:
            x = x + (x - d_) / sigmas[i] * (down - sigmas[i])
        else:
            t, t_next, t_prev = -math.log(sigmas[i]), -math.log(down), -math.log(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t) / h  # the two estimates' own places (ComfyUI: t_prev - t(old sigma_down))
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            x = math.exp(-h) * x + h * ((phi1 - phi2 / c2) * d_ + (phi2 / c2) * old_denoised)
        if sigmas[i + 1] > 0 and up > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * up
        old_denoised = d_
    return x


@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.6, 0.8), (0.0, 1.0)])
def test_dpmpp_2s_ancestral_is_k_diffusions_loop(eta: float, s_noise: float) -> None:
    ours, _ = run_ours("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise})
    n, noise_sampler = generator_noise()
    theirs = kd_dpmpp_2s_ancestral(n.double() * SIGMAS[0], SIGMAS, noise_sampler, eta, s_noise)
    # 1e-6: the lab scales the float32 draw in float32 (the latents are float32 in a real run).
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_res_multistep_is_the_published_two_step_res_update(eta: float) -> None:
    ours, _ = run_ours("res_multistep", {"eta": eta})
    n, noise_sampler = generator_noise()
    theirs = comfy_res_multistep(n.double() * SIGMAS[0], SIGMAS, noise_sampler, eta)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_ipndm_is_comfyuis_loop_and_lms_is_k_diffusions() -> None:
    n = make_true_noise(5, SHAPE).double()
    torch.testing.assert_close(run_ours("ipndm", {})[0], comfy_ipndm(n * SIGMAS[0], SIGMAS), rtol=1e-10, atol=1e-10)
    for order in (1, 2, 4):
        ours = run_ours("lms", {"order": order})[0]
        torch.testing.assert_close(ours, kd_lms(n * SIGMAS[0], SIGMAS, order), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, loop", [("dpmpp_sde", kd_dpmpp_sde), ("dpmpp_3m_sde", kd_dpmpp_3m_sde)])
@pytest.mark.parametrize("eta, s_noise", [(1.0, 1.0), (0.5, 0.7)])
def test_brownian_samplers_are_k_diffusions_loops_with_comfyuis_tree(name, loop, eta, s_noise) -> None:
    """Same seed, same float32 tree times: the lab's Brownian noise is ComfyUI's (k-diffusion's with CPU float32)."""
    ours, _ = run_ours(name, {"eta": eta, "s_noise": s_noise})
    n = make_true_noise(5, SHAPE).double()
    theirs = loop(n * SIGMAS[0], SIGMAS, kdiffusion_brownian(5, SIGMAS), eta, s_noise)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    other = loop(n * SIGMAS[0], SIGMAS, kdiffusion_brownian(6, SIGMAS), eta, s_noise)
    assert (ours - other).abs().max() > 1e-3


def test_brownian_noise_is_standard_normal_and_a_brownian_motion() -> None:
    noise = BrownianNoise([7], (1, 4, 64, 64), 0.03, 14.6)
    z = noise(14.6, 3.0)
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1) < 0.03
    # Increments add up: sqrt(a) B(14.6, 3) + sqrt(b) B(3, 1) = sqrt(a + b) B(14.6, 1).
    whole = noise(14.6, 1.0) * math.sqrt(13.6)
    parts = z * math.sqrt(11.6) + noise(3.0, 1.0) * math.sqrt(2.0)
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-4)
    assert torch.equal(z, BrownianNoise([7], (1, 4, 64, 64), 0.03, 14.6)(14.6, 3.0))  # a re-run is bit-identical


# ---- the per-step noise rule and the true noise TNR sees -------------------------------------------------------


def test_ancestral_noise_is_the_generators_next_draws_and_the_true_noise_is_tracked() -> None:
    sigmas = [8.0, 3.0, 1.0, 0.0]
    noise = NoiseSource([9], SHAPE)
    n = noise.true_noise.double()
    ctx = SolverContext(sigmas=sigmas, predict=predict, noise=noise, true_noise=n)
    solver = make_solver("euler_ancestral", {"eta": 1.0, "s_noise": 0.9})
    g = torch.Generator("cpu").manual_seed(9)
    assert torch.equal(torch.randn(SHAPE, generator=g), noise.true_noise)
    x, tracked = n * sigmas[0], n
    for i in range(3):
        expected_x = x - sigmas[i] * predict(x, sigmas[i]).den
        down, up = ancestral_step(sigmas[i], sigmas[i + 1])
        expected_x = denoise(x, sigmas[i]) + down * predict(x, sigmas[i]).ren
        x = solver.step(ctx, x, i)
        if sigmas[i + 1] > 0:
            z = torch.randn(SHAPE, generator=g).double()
            torch.testing.assert_close(x, expected_x + 0.9 * up * z)
            tracked = (down * tracked + 0.9 * up * z) / sigmas[i + 1]
            torch.testing.assert_close(ctx.true_noise, tracked)
        else:
            torch.testing.assert_close(x, expected_x)
    assert noise.draws == 2  # one per step that injects noise; none at the last


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "dpm_2_ancestral"])
def test_the_tracked_true_noise_keeps_unit_variance(name: str) -> None:
    shape = (1, 4, 64, 64)
    noise = NoiseSource([3], shape)
    ctx = SolverContext(sigmas=SIGMAS, predict=predict, noise=noise, true_noise=noise.true_noise.double())
    solver, x = make_solver(name, {}), noise.true_noise.double() * SIGMAS[0]
    for i in range(len(SIGMAS) - 2):
        x = solver.step(ctx, x, i)
        n = ctx.true_noise
        assert abs(float(n.std()) - 1) < 0.03 and abs(float(n.mean())) < 0.03, i
        # It is a different noise than the seeded one after the first injection (the tracking is real).
        assert float((n - noise.true_noise).abs().mean()) > 0.1


def test_tnr_cfg_with_euler_ancestral_pushes_away_from_the_tracked_noise() -> None:
    """A two-step run by hand: the second step's TNR uses n' = (sigma_down n + sigma_up z) / sigma_1."""
    bundle = GaussianBundle()
    g, p = 3.0, 0.25
    result = sample(
        bundle, request(solver="euler_ancestral", guidance="tnr-cfg", scale=g, steps=3, schedule="trailing", seed=4)
    )
    sigmas = result.stats["sigmas"]
    gen = torch.Generator("cpu").manual_seed(4)
    n = torch.randn((1, 4, 4, 4), generator=gen).double()
    u_mu, c_mu = bundle.text_mean("blurry"), bundle.text_mean("a red square")
    x = n * sigmas[0]
    for i in range(3):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        S = 2 - (1 / (1 + sigma_next**2)) ** p
        u = sigma * (x - u_mu) / (sigma**2 + 0.25)
        c = sigma * (x - c_mu) / (sigma**2 + 0.25)
        e = n + S * (u + g * (c - u) - n)
        down, up = ancestral_step(sigma, sigma_next)
        x = x - sigma * e + down * e
        if sigma_next > 0:
            z = torch.randn((1, 4, 4, 4), generator=gen).double()
            x = x + up * z
            n = (down * n + up * z) / sigma_next
    torch.testing.assert_close(result.latent.double(), x, rtol=1e-5, atol=1e-5)


# ---- what cfg++ and TNR do to the history --------------------------------------------------------------------


def scripted(pairs: list[tuple[float, float]]):
    """A predict that returns constant (den, ren) per call, so each step's D and x~ are known."""
    calls = iter(pairs)

    def predict_(x: torch.Tensor, s: float) -> Prediction:
        den, ren = next(calls)
        return Prediction(x, s, torch.full_like(x, den), torch.full_like(x, ren))

    return predict_


def test_cfg_pp_dpmpp_2m_history_holds_the_guided_estimates() -> None:
    """Step 2 of DPM++ 2M under cfg++: x_2 = (s2/s1) x~_1 - expm1(-h) ((1 + 1/2r) D_1 - 1/2r D_0), with D the
    guided estimates (x - sigma den) and x~ = D + sigma ren (ComfyUI's and the CFG++ authors' 2M use the
    unconditional D_0 in the correction instead: MATH.md 9)."""
    sigmas = [6.0, 3.0, 1.0, 0.0]
    pairs = [(0.5, -0.2), (0.3, 0.1), (0.2, 0.0)]
    x0 = torch.linspace(-1, 1, 36, dtype=torch.float64).view(SHAPE) * 6
    solver = make_solver("dpmpp_2m")
    ctx = SolverContext(sigmas=sigmas, predict=scripted(pairs))
    x1 = solver.step(ctx, x0, 0)
    d0 = x0 - 6.0 * pairs[0][0]
    torch.testing.assert_close(x1, d0 + 3.0 * pairs[0][1])
    x2 = solver.step(ctx, x1, 1)
    d1 = x1 - 3.0 * pairs[1][0]
    x_tilde = d1 + 3.0 * pairs[1][1]
    h, h_last = math.log(3.0), math.log(2.0)
    r = h_last / h
    torch.testing.assert_close(x2, (1 / 3) * x_tilde - math.expm1(-h) * ((1 + 1 / (2 * r)) * d1 - (1 / (2 * r)) * d0))
    assert torch.equal(solver.previous, d1)


def test_cfg_pp_lms_history_holds_the_renoising_eps() -> None:
    sigmas = [6.0, 3.0, 1.0, 0.0]
    pairs = [(0.5, -0.2), (0.3, 0.1), (0.2, 0.0)]
    x0 = torch.ones(SHAPE, dtype=torch.float64)
    solver = make_solver("lms", {"order": 2})
    ctx = SolverContext(sigmas=sigmas, predict=scripted(pairs))
    x1 = solver.step(ctx, x0, 0)
    x2 = solver.step(ctx, x1, 1)
    x_tilde = (x1 - 3.0 * pairs[1][0]) + 3.0 * pairs[1][1]
    # Adams-Bashforth 2 on uneven steps: c0 = dt (1 + dt / (2 h_prev)), c1 = -dt^2 / (2 h_prev), on ren.
    dt, h_prev = -2.0, -3.0
    c0, c1 = dt * (1 + dt / (2 * h_prev)), -(dt**2) / (2 * h_prev)
    torch.testing.assert_close(x2, x_tilde + c0 * pairs[1][1] + c1 * pairs[0][1])
    assert solver.history.values[-1].unique().tolist() == [pairs[1][1]]


def test_tnr_dpmpp_2m_history_holds_the_tnr_pushed_estimates() -> None:
    """With TNR the history keeps the D the step used: D_i = x_i - sigma_i (n + S_i (c_i - n)), S per step."""
    bundle = GaussianBundle()
    result = sample(bundle, request(solver="dpmpp_2m", guidance="tnr", steps=4, schedule="trailing", seed=8))
    sigmas = result.stats["sigmas"]
    n = make_true_noise(8, (1, 4, 4, 4)).double()
    mu = bundle.text_mean("a red square")
    x, previous, h_previous = n * sigmas[0], None, None
    for i in range(4):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        S = 2 - (1 / (1 + sigma_next**2)) ** 0.25
        e = n + S * (sigma * (x - mu) / (sigma**2 + 0.25) - n)
        d = x - sigma * e
        if sigma_next == 0:
            x = d
            continue
        h = math.log(sigma / sigma_next)
        mixed = d if previous is None else (1 + h / (2 * h_previous)) * d - h / (2 * h_previous) * previous
        x = (sigma_next / sigma) * x - math.expm1(-h) * mixed
        previous, h_previous = d, h
    torch.testing.assert_close(result.latent.double(), x, rtol=1e-5, atol=1e-5)


def test_ddim_at_eta_zero_is_euler_bit_for_bit_and_euler_ancestral_too() -> None:
    euler = sample(GaussianBundle(), request(solver="euler", guidance="cfg++", steps=6)).latent
    assert torch.equal(sample(GaussianBundle(), request(solver="ddim", guidance="cfg++", steps=6)).latent, euler)
    quiet = request(solver="euler_ancestral", guidance="cfg++", steps=6, solver_params={"eta": 0.0})
    assert torch.equal(sample(GaussianBundle(), quiet).latent, euler)
