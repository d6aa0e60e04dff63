"""The run's seeded noise (MATH.md 2): the true noise and, for stochastic solvers, every noise they inject.

One CPU generator per image, seeded with the image's seed: its first standard normal draw is the true noise n,
and each later draw is the next noise a stochastic solver asks for, in order (as a diffusers pipeline given
`generator=torch.Generator("cpu").manual_seed(seed)` draws its latents and then its schedulers' noise).
Float32 on the CPU whatever the device, so a re-run is bit-identical and GPU and CPU runs see the same noise.
Deterministic solvers never draw past n, so their runs do not depend on this rule beyond n.
"""

from __future__ import annotations

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


def make_true_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The true noise n: one standard normal draw, float32 on the CPU whatever the device (MATH.md 2)."""
    return NoiseSource([seed], shape).true_noise
