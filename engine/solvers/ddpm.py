"""ddpm: the DDPM ancestral sampler (Ho et al. 2020, arXiv:2006.11239), posterior variance beta~_t ("fixed_small").

With abar = 1 / (1 + sigma^2) and abar' = 1 / (1 + sigma'^2) at the step's two grid points (alpha = abar / abar',
beta = 1 - alpha), DDPM samples the posterior q(x_(t-1) | x_t, x0) with the model's x0, in the VP variable:

    mu    = sqrt(abar') beta / (1 - abar) x0 + sqrt(alpha) (1 - abar') / (1 - abar) x_vp
    x'_vp = mu + sqrt(beta~) z,   beta~ = (1 - abar') / (1 - abar) beta

Divided by sqrt(abar') (x = x_vp / sqrt(abar), x0 = D) the coefficients become sigma'^2 / sigma^2 and
1 - sigma'^2 / sigma^2, and beta~ / abar' = sigma'^2 (sigma^2 - sigma'^2) / sigma^2:

    x' = D + (sigma'^2 / sigma) (x - D) / sigma + sigma_up z,   sigma_up = (sigma' / sigma) sqrt(sigma^2 - sigma'^2)

which is the ancestral step of `get_ancestral_step(sigma, sigma', 1)`: sigma_down = sigma'^2 / sigma, the same
sigma_up. So the unit is the lab's ancestral Euler step (engine/solvers/ancestral.py) at eta 1, and it inherits
the rest from there: x~ = D + sigma ren stands for x (CFG++: x' = D + sigma_down u + sigma_up z), and the true
noise is tracked as n' = (sigma_down n + sigma_up z) / sigma' (MATH.md 9.2). A step to sigma 0 returns D and
draws nothing (DDPM's t = 0: abar' = 1, beta~ = 0). One evaluation per step, one draw of the run's generator per
step that does not end at 0, in order after the true noise: diffusers' DDPMScheduler given the pipeline's
generator draws the same tensors.

`eta` (default 1, DDPM) is DDIM's (Song et al. 2021, eq. 16: eta 1 is DDPM's posterior, eta 0 the deterministic
DDIM), and `s_noise` scales the noise as in the other ancestral units; DDPM itself has neither (diffusers'
DDPMScheduler and ComfyUI's `ddpm` are eta 1, s_noise 1). At the defaults ddpm is euler_ancestral (and ddim at
eta 1) bit for bit; it is a unit of its own because "ddpm" is the name users bring from ComfyUI and diffusers.

Where the peers differ, the lab takes ComfyUI's convention with diffusers' numbers:
- ComfyUI's `sample_ddpm` steps in the VP variable on any sigma grid, with abar from the sigmas
  (1 / (1 + sigma^2)) and the mean in the eps form (x_vp - beta eps / sqrt(1 - abar)) / sqrt(alpha). The lab
  too reads abar from the grid's sigmas (so ddpm runs on every schedule, fractional timesteps included), and
  steps in the VE variable: the same numbers up to rounding.
- diffusers' DDPMScheduler steps on its trained `alphas_cumprod` at integer timesteps, from t to the next
  timestep of its list (abar' = 1 after the last): the lab's sigmas on a discrete grid are those table values,
  so on the grid diffusers builds (leading, steps_offset 1 for SDXL; trailing; linspace) the two agree
  (tests/test_ddpm.py, 1e-4). Its start is n in the VP variable, n sqrt(1 + sigma_0^2) here: the lab's start
  on leading grids; on trailing and linspace ones the lab starts at n sigma_0 (MATH.md 9.5). Not followed: `clip_sample` / `thresholding` of the predicted x0 (SDXL's config has both off;
  the lab never clips D), the 1e-20 floor of beta~, and the other variance types (fixed_large, learned_range:
  DeepFloyd IF's, which needs a model that predicts its variance).
"""

from __future__ import annotations

from engine.solvers.ancestral import AncestralEuler
from engine.solvers.common import S_NOISE, eta_param
from engine.units import SOLVERS


@SOLVERS.register
class DDPM(AncestralEuler):
    name = "ddpm"
    aliases = ("DDPM",)  # A1111 has no DDPM sampler; ComfyUI's name is the unit's own
    a1111 = None  # written as "ddpm" into A1111 metadata (png.a1111_sampler_name falls back to the name)
    summary = (
        "DDPM (Ho et al. 2020): the posterior step with variance beta~_t, diffusers' DDPMScheduler (fixed_small), "
        "ComfyUI's ddpm; eta < 1 moves it toward DDIM"
    )
    params = (eta_param(1.0), S_NOISE)
    rank = 71  # beside ddim
