"""Batched seeds: which requests may share one model call per stage, and how many fit (docs/CONTRACTS.md).

`engine.sampler.sample_batch` samples requests that differ only in their seed, prompts and tags as one batch:
every stage is one model call for all images (the image's rows stacked, a a b b), while each image keeps its
own seed, true noise, noise stream (one CPU float32 generator, or Brownian tree, per image) and guidance
(every method combines per image: norms and projections over the non-batch dimensions). So a batched image
is its unbatched run up to the last bits of a batched convolution (docs/batching.md gives the measured drift).

`batch_key` says which requests may go together; `choose_batch_size` how many fit a memory budget, estimated
from the latent size and the UNet's widths (or forced). Torch-free at import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

# The fields a batch may vary per image. Everything else is one value for the whole batch: the grid, the
# solver, the guidance and its parameters, the size, the model and its LoRAs.
PER_IMAGE_FIELDS = ("seed", "prompt", "negative_prompt", "tags")

# Past this many images a CPU call no longer gets cheaper per image (measured on the embedded model: 2.5 ms a
# row at 32 images, 2.7 at 64), and a GPU batch of SDXL saturates well below it; larger batches only delay
# the first results and make a lost worker cost more.
MAX_BATCH = 32


def batch_key(request: Any) -> str:
    """A text equal for requests that can be sampled as one batch (all but PER_IMAGE_FIELDS equal)."""
    data = request.to_dict() if hasattr(request, "to_dict") else dict(request)
    for name in PER_IMAGE_FIELDS:
        data.pop(name, None)
    return json.dumps(data, sort_keys=True, default=str)


def batch_difference(requests: Sequence[Any]) -> str | None:
    """None when the requests can be one batch, else the first field that differs (for the message)."""
    if len(requests) < 2:
        return None
    first = requests[0].to_dict()
    for other in requests[1:]:
        data = other.to_dict()
        for name in sorted(set(first) | set(data)):
            if name not in PER_IMAGE_FIELDS and first.get(name) != data.get(name):
                return name
    return None


def rows_per_image(request: Any) -> int:
    """The most rows one image adds to a model call (its guidance's predictions per stage, at most)."""
    from engine.guidance import GuidancePlan

    plan = GuidancePlan.from_request(request)
    return max(plan.evaluations(None, request.steps) or [1])


def _dtype_bytes(dtype: Any) -> int:
    text = str(dtype)
    return 2 if ("16" in text) else 4


def estimate_image_bytes(bundle: Any, request: Any) -> int:
    """Peak working memory one image adds to a batch's model calls (its UNet rows).

    A rough upper estimate from the widths (no forward pass): the UNet keeps its skip connections (one tensor
    per layer of each down level) and a working set of a few tensors per level, plus each self-attention
    level's scores (heads x (h w)^2, as if attention were not memory-efficient). It errs high. The sampler
    decodes a batch image by image, so the decode is counted once per batch (`decode_bytes`), not per image.
    """
    factor = int(getattr(bundle, "vae_scale_factor", 8))
    height = request.height or bundle.default_size[0]
    width = request.width or bundle.default_size[1]
    h, w = height // factor, width // factor
    size = _dtype_bytes(getattr(bundle, "dtype", "float32"))
    config = getattr(getattr(bundle, "unet", None), "config", None)
    if config is None:  # a stand-in bundle: the latent and its few copies
        return 64 * int(getattr(bundle, "latent_channels", 4)) * h * w * 4 * rows_per_image(request)
    channels = list(config.block_out_channels)
    layers = int(config.layers_per_block) if isinstance(config.layers_per_block, int) else max(config.layers_per_block)
    heads = getattr(config, "num_attention_heads", None) or config.attention_head_dim
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    types = list(config.down_block_types)
    unet = 0
    for level, c in enumerate(channels):
        pixels = max(1, (h >> level) * (w >> level))
        unet += (layers + 1 + 12) * c * pixels  # skips and working set
        if "CrossAttn" in types[level]:
            # diffusers' attention_head_dim holds the head count in SDXL-style configs (num_attention_heads None)
            unet += 2 * int(heads[level]) * pixels * pixels  # scores and softmax of the self-attention
    return int(unet * size * rows_per_image(request))


def decode_bytes(bundle: Any, height: int, width: int) -> int:
    """Working memory of decoding one image: a few full-resolution tensors of the decoder's last width, and
    the mid block's single-head attention over the latent's pixels (float32, as the lab's decoder runs)."""
    decoder = getattr(getattr(bundle, "decoder", None), "decoder", None)
    factor = int(getattr(bundle, "vae_scale_factor", 8))
    full = int(getattr(getattr(decoder, "conv_out", None), "in_channels", 128))
    widest = int(getattr(getattr(decoder, "conv_in", None), "out_channels", 512))
    pixels = (height // factor) * (width // factor)
    return 4 * (8 * full * height * width + 4 * widest * pixels + 2 * pixels * pixels)


def memory_budget(bundle: Any) -> int:
    """Bytes a batch may use: most of the GPU's free memory, a quarter of the host's available memory on CPU."""
    device = str(getattr(bundle, "device", "cpu"))
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.7)
    if device.startswith("mps"):
        return 4 << 30
    available = _available_host_memory()
    return int(min(available // 4, 8 << 30))


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def choose_batch_size(
    bundle: Any, request: Any, images: int, *, forced: int | None = None, budget: int | None = None
) -> int:
    """How many of `images` images of this request to sample per batch: `forced` (--batch N) as given, else
    as many as the memory budget holds, at most MAX_BATCH, at least 1."""
    if forced is not None:
        return max(1, min(int(forced), max(1, images)))
    per_image = max(1, estimate_image_bytes(bundle, request))
    budget = memory_budget(bundle) if budget is None else budget
    height = request.height or bundle.default_size[0]
    width = request.width or bundle.default_size[1]
    budget -= decode_bytes(bundle, height, width)
    return max(1, min(MAX_BATCH, images, budget // per_image))
