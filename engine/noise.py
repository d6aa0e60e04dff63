"""The run's seeded noise (MATH.md 2): the true noise and, for stochastic solvers, every noise they inject.

One CPU generator per image, seeded with the image's seed: its first standard normal draw is the true noise n,
and each later draw is the next noise a stochastic solver asks for, in order (as a diffusers pipeline given
`generator=torch.Generator("cpu").manual_seed(seed)` draws its latents and then its schedulers' noise).
Float32 on the CPU whatever the device, so a re-run is bit-identical and GPU and CPU runs see the same noise.
Deterministic solvers never draw past n, so their runs do not depend on this rule beyond n.

The DPM++ SDE samplers draw Brownian-tree increments instead (`NoiseSource.brownian`): one
`torchsde.BrownianTree` per image over [smallest nonzero sigma, largest sigma] of the grid, entropy = the
image's seed, times in float32, state float32 on the CPU, as k-diffusion's and ComfyUI's
BrownianTreeNoiseSampler (so the same seed and sigmas give ComfyUI's Brownian noise). They take nothing from
the generator after n.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

import torch


class NoiseSource:
    """The noise of a batch of images, one generator (and seed) each."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        # shape: one image's latent, (1, C, h, w)
        self.seeds = tuple(int(s) for s in seeds)
        self.shape = shape
        self.device = torch.device(device)
        self.generators = [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]
        self.true_noise = self._draw()  # CPU float32, [batch, C, h, w]
        self.draws = 0  # standard normal draws after the true noise (per image)

    def _draw(self) -> torch.Tensor:
        parts = [torch.randn(self.shape, generator=g, dtype=torch.float32) for g in self.generators]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def normal(self) -> torch.Tensor:
        """The next standard normal draw of every image, on the run's device (float32)."""
        self.draws += 1
        return self._draw().to(self.device)

    def brownian(self, sigma_min: float, sigma_max: float) -> BrownianNoise:
        """The Brownian-tree noise of every image over [sigma_min, sigma_max] (built once per interval)."""
        trees = getattr(self, "_brownian", None)
        if trees is None:
            trees = self._brownian = {}
        key = (float(sigma_min), float(sigma_max))
        if key not in trees:
            trees[key] = BrownianNoise(self.seeds, self.shape, sigma_min, sigma_max, self.device)
        return trees[key]


def float32(value: float) -> float:
    """A sigma as the Brownian tree sees it: rounded to float32, as ComfyUI's and diffusers' sigma tensors are."""
    return float(torch.tensor(value, dtype=torch.float32))


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler: noise(sigma, sigma_next) = (W(sigma_next) - W(sigma)) / sqrt(|dt|).

    A standard normal per element for every interval; increments over overlapping intervals are correlated as
    a Brownian motion's are (dpmpp_sde's two sub-steps share their start).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        shape: tuple[int, ...],
        sigma_min: float,
        sigma_max: float,
        device: torch.device | str = "cpu",
    ) -> None:
        import torchsde

        self.device = torch.device(device)
        t0, t1 = float32(sigma_min), float32(sigma_max)
        if not t0 < t1:  # a one-sigma grid: any nonempty interval around it
            t1 = t0 + 1.0
        self.t0, self.t1 = t0, t1
        w0 = torch.zeros(shape, dtype=torch.float32)
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(seed)) for seed in seeds]
        # A query costs a bisection of the tree down to its tolerance (~24 levels of bridge samples: 34 ms for an
        # SDXL latent on a CPU core), comparable to a GPU step. The tree's values do not depend on the order of
        # queries (torchsde's BrownianTree; checked bit for bit in the tests), so `prefetch` computes a run's
        # increments ahead on a thread while the model runs; the lock keeps the tree to one thread at a time.
        self._lock = threading.Lock()
        self._ready: dict[tuple[float, float], torch.Tensor] = {}
        self._worker: threading.Thread | None = None

    @property
    def prefetching(self) -> bool:
        return self._worker is not None

    def prefetch(self, intervals: Sequence[tuple[float, float]]) -> None:
        """Compute these (sigma, sigma_next) increments ahead, in order, on a background thread."""
        if self._worker is not None:
            return
        wanted = [(float32(a), float32(b)) for a, b in intervals]

        def work() -> None:
            for key in wanted:
                with self._lock:
                    if key not in self._ready:
                        self._ready[key] = self._increment(*key)

        self._worker = threading.Thread(target=work, name="brownian-prefetch", daemon=True)
        self._worker.start()

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        key = (float32(sigma), float32(sigma_next))
        with self._lock:
            w = self._ready.pop(key, None)
            if w is None:
                w = self._increment(*key)
        return w.to(self.device)

    def _increment(self, a: float, b: float) -> torch.Tensor:
        """(W(b) - W(a)) / sqrt(|b - a|) on the CPU, a and b already float32 values."""
        low, high, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        low, high = max(low, self.t0), min(high, self.t1)
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends to its tolerance's digits and then warns (and clamps) when a query
            # at the grid's own first or last sigma lies past them by that rounding; k-diffusion's queries do too.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = torch.cat([tree(low, high) for tree in self.trees]) * sign
        scale = (torch.tensor(b, dtype=torch.float32) - torch.tensor(a, dtype=torch.float32)).abs().sqrt()
        return w / scale


def make_true_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The true noise n: one standard normal draw, float32 on the CPU whatever the device (MATH.md 2)."""
    return NoiseSource([seed], shape).true_noise
