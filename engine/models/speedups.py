"""Exact speed-ups of a diffusers SDXL UNet: the same operations on the same inputs, less repeated work.

1. Work the UNet repeats at every step for the same conditioning, done once per conditioning.

Two things in an SDXL UNet call depend only on the conditioning, not on the latent or the timestep:
- the cross-attention keys and values, `to_k(text)` and `to_v(text)`, in every transformer block;
- the `text_time` added embedding (pooled text embedding + sinusoidal size/crop ids -> two linear layers).

The sampler calls `eps` with the same `Conditioning` object at every step, so both are computed at the first
step and reused: the same operations on the same inputs, hence bit-identical results (the parity tests pin
this). The cache lives on the `Conditioning` object and dies with it; while no cache is active (a direct
UNet call), the attention is computed in full.

2. Less Python per call: the transformer blocks' attention modules get a lean `forward` that calls the same
torch functions on the same parameters, skipping `Attention.forward`'s per-call signature inspection (on
small UNets the Python overhead is a large share of a step). Modules with any option the lean path does not
implement keep diffusers' forward. (A lean resnet forward was tried too: 1-3%, not worth the coupling.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


class ConditioningCache:
    """Which cache dict (one per Conditioning) the UNet's hooks use during the current call; None: none."""

    def __init__(self) -> None:
        self.current: dict[Any, Any] | None = None

    @contextmanager
    def active(self, cache: dict[Any, Any] | None) -> Iterator[None]:
        self.current = cache
        try:
            yield
        finally:
            self.current = None


def _plain_sdpa_attention(attn: Any) -> bool:
    """True for the attention modules of SDXL's transformer blocks (what AttnProcessor2_0 reduces to)."""
    return (
        attn.spatial_norm is None
        and attn.group_norm is None
        and not attn.norm_cross
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.residual_connection
    )


class FastAttention:
    """The `forward` of one diffusers Attention module of a transformer block: AttnProcessor2_0's operations.

    Installed per module as an instance attribute, it skips `Attention.forward`'s per-call signature
    inspection (a measurable share of a small UNet's time). For cross-attention (`attn2`) the text keys and
    values come from the conditioning cache when one is active.
    """

    def __init__(self, attn: Any, store: ConditioningCache, cross: bool, original_forward: Any) -> None:
        self.attn = attn
        self.store = store
        self.cross = cross
        self.original_forward = original_forward
        self.processor = attn.processor  # a processor set later (LoRA, IP-adapter...) takes precedence

    def __call__(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        attn = self.attn
        if attention_mask is not None or kwargs or hidden_states.ndim != 3 or attn.processor is not self.processor:
            return self.original_forward(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        batch = hidden_states.shape[0]
        heads = attn.heads
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        cache = self.store.current if self.cross and encoder_hidden_states is not None else None
        key_value = cache.get(id(attn)) if cache is not None else None
        if key_value is None:
            key, value = attn.to_k(context), attn.to_v(context)
            head_dim = key.shape[-1] // heads
            key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
            value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
            key_value = (key, value)
            if cache is not None:
                cache[id(attn)] = key_value
        key, value = key_value
        head_dim = key.shape[-1]
        query = attn.to_q(hidden_states).view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def install_speedups(unet: Any) -> ConditioningCache:
    """Install the exact speed-ups into a diffusers UNet2DConditionModel; returns the conditioning cache switch."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    store = ConditioningCache()
    for name, module in unet.named_modules():
        if not isinstance(module, Attention) or not isinstance(module.processor, AttnProcessor2_0):
            continue  # another processor was set on purpose (LoRA, IP-adapter...): leave it alone
        if not _plain_sdpa_attention(module):
            continue
        # An instance attribute shadows nn.Module's forward for this module only.
        module.forward = FastAttention(module, store, cross=name.endswith("attn2"), original_forward=module.forward)

    original_aug_embed = unet.get_aug_embed

    def cached_aug_embed(emb: torch.Tensor, encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict) -> Any:
        cache = store.current
        if cache is None:
            return original_aug_embed(
                emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
            )
        key = ("aug_embed", emb.dtype)
        if key not in cache:
            cache[key] = original_aug_embed(
                emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
            )
        return cache[key]

    # An instance attribute shadows the method for this UNet only.
    unet.get_aug_embed = cached_aug_embed
    return store
