"""The sampling loop, written once for every solver and guidance method (MATH.md sections 2 to 6).

    x_T = n * init_noise_sigma                    n: the true noise, CPU float32, seeded by the request
    for each step sigma -> sigma_next of the grid:
        the step's guidance (rows to evaluate, S held fixed) -> pair function (den, ren)
        x = rk_step(tableau, pair, x, sigma, sigma_next)          (Euler when sigma_next == 0)
    image = decode(x)

The model is only reached through the bundle (docs/CONTRACTS.md): `encode`, `eps` (one batched call per
stage), `decode`, `preview`, `schedule`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from engine.batch import batch_difference
from engine.evaluations import planned_evaluations
from engine.guidance import GuidancePlan, StepGuidance
from engine.noise import NoiseSource, make_true_noise  # noqa: F401  (make_true_noise: re-exported)
from engine.preview import decoded_to_image
from engine.request import GenerationRequest, RequestError
from engine.solvers import Prediction, SolverContext, make_solver
from engine.telemetry import Recorder, StepTable, cond_and_uncond


class SamplingCancelled(Exception):
    """`should_stop()` returned true; raised before the next model evaluation."""


class SamplingError(RuntimeError):
    """The run cannot go on (a non-finite latent); the message names the step.

    `images`: in a batch, the indices of the images that failed (the others were fine up to then)."""

    images: tuple[int, ...] = ()


@dataclass
class StepEvent:
    index: int  # 0-based
    steps: int
    sigma: float
    sigma_next: float
    denoised: torch.Tensor  # D = x - sigma * den at the step's start, model space, CPU float32
    preview: Image.Image | None
    image: Image.Image | None  # full decode on `decode_every` steps
    tnr_factor: float | None
    evaluations: int  # model evaluations so far (a batched call of k predictions counts k)
    elapsed: float  # seconds since sampling began
    # The step's telemetry row of each image (engine.telemetry: column -> value); empty with telemetry off.
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Result:
    latent: torch.Tensor  # final latent in model space, CPU float32 (diffusers' output_type="latent")
    image: Image.Image
    true_noise: torch.Tensor  # CPU float32
    stats: dict[str, Any] = field(default_factory=dict)
    request: GenerationRequest | None = None  # the request with resolved sizes
    telemetry: list[StepTable] | None = None  # one table of per-step rows per image; None with telemetry off

    @property
    def steps(self) -> StepTable | None:
        """The first (today: the only) image's per-step rows."""
        return self.telemetry[0] if self.telemetry else None


def denoised_estimate(x: torch.Tensor, sigma: float, den: torch.Tensor) -> torch.Tensor:
    """D = x - sigma * den: the clean-image estimate that previews show (MATH.md 2)."""
    return x - sigma * den


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve_request(bundle: Any, request: GenerationRequest) -> GenerationRequest:
    """Fill in the model's native size, its default scale (when the request has none and the model names
    one for the method) and its default CFG rescale, and check the size against the model's latent factor.

    A bundle with `configure` (engine.models) first takes the request's LoRAs and prediction overrides; the
    request it returns names each LoRA's sha256 (what the history keeps)."""
    configure = getattr(bundle, "configure", None)
    if configure is not None:
        request = configure(request)
    if request.cfg_rescale is None:
        request = request.replace(cfg_rescale=float(getattr(bundle, "default_cfg_rescale", 0.0)))
    height, width = bundle.default_size
    request = request.replace(width=request.width or width, height=request.height or height)
    model_scale = getattr(bundle, "default_scales", {}).get(request.guidance)
    if request.scale is None and model_scale is not None and not request.prompts:
        request = request.replace(scale=model_scale)
    factor = bundle.vae_scale_factor
    for name in ("width", "height"):
        value = getattr(request, name)
        if value % factor:
            raise RequestError(f"{name} must be a multiple of {factor} for this model, got {value}")
    return request


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA/MPS out-of-memory errors and the CPU allocator's refusal (a RuntimeError)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def sample(
    bundle: Any,
    request: GenerationRequest,
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result:
    """Run one request on a loaded model bundle; see the module docstring and docs/CONTRACTS.md.

    Running out of memory is a SamplingError that says so (not the allocator's text).
    """
    image_callback = None if on_step is None else (lambda _image, event: on_step(event))
    return _guarded(bundle, [request], image_callback, should_stop)[0]


def sample_batch(
    bundle: Any,
    requests: Sequence[GenerationRequest],
    on_step: Callable[[int, StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Result]:
    """Requests that differ only in seed, prompts and tags (engine.batch.PER_IMAGE_FIELDS) as one batch.

    One model call per stage for all images; each image keeps its own seed, true noise and noise stream, and
    gets its own Result (latent, image, stats with its evaluations and `stats["batch"]`: size, index, the
    batch's seconds). `on_step(image_index, event)` is called per image after each step, the event holding
    that image's denoised estimate, preview and telemetry row. Requests that cannot share a batch are a
    RequestError naming the field; a non-finite image is a SamplingError whose `images` names it.
    """
    if not requests:
        return []
    return _guarded(bundle, list(requests), on_step, should_stop)


def _guarded(
    bundle: Any,
    requests: list[GenerationRequest],
    on_step: Callable[[int, StepEvent], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list[Result]:
    callback_errors: list[BaseException] = []

    def step_callback(image: int, event: StepEvent) -> None:
        try:
            on_step(image, event)  # type: ignore[misc]
        except BaseException as e:  # the caller's own error: passed through as it is, never relabelled
            callback_errors.append(e)
            raise

    try:
        return _sample(bundle, requests, step_callback if on_step is not None else None, should_stop)
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, SamplingError) or e in callback_errors or not is_out_of_memory(e):
            raise
        request = requests[0]
        size = f"{request.width or bundle.default_size[1]}x{request.height or bundle.default_size[0]}"
        batch = f" in a batch of {len(requests)}" if len(requests) > 1 else ""
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SamplingError(
            f"out of memory on {bundle.device} at {size}{batch}: try a smaller size{', a smaller --batch' if batch else ''}, "
            f"float16, or another device ({detail})"
        ) from e


DECODE_TOGETHER_PIXELS = 512 * 512  # a batch's final images decode in one call up to this many pixels in all


def decode_together(images: int, height: int, width: int) -> bool:
    """Whether a batch's final latents are decoded in one call: for small images, where a decoder call of one
    image is mostly overhead (the embedded model's 64 px: 8.5 ms an image alone, 5.2 ms in a call of 32).
    Larger images decode one at a time, as before: no time to gain, and the working memory the batch size was
    chosen with (engine.batch) holds one image's decode. Either way an image depends only on its own request
    and the batch size (the same rule for every image of a batch); against a decode of its latent alone it may
    differ by one level of 255 in a few values (docs/batching.md), as the batched UNet already makes it."""
    return images * height * width <= DECODE_TOGETHER_PIXELS


def _seeded(perturbation: Any) -> bool:
    """A perturbed pass whose randomness comes from the run's seed (autoguidance's dropout below 1): in a batch
    each image takes its own pass, with its own seed (engine/models/perturb.py)."""
    return getattr(perturbation, "kind", "") == "layer_skip" and float(getattr(perturbation, "dropout", 1.0)) < 1.0


def _sample(
    bundle: Any,
    requests: list[GenerationRequest],
    on_step: Callable[[int, StepEvent], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list[Result]:
    started = time.perf_counter()
    requests = [resolve_request(bundle, r) for r in requests]
    different = batch_difference(requests)
    if different is not None:
        raise RequestError(f"a batch's requests may differ only in seed, prompts and tags, not in {different}")
    request = requests[0]  # everything but the per-image fields is the same for all of them
    images = len(requests)
    schedule = bundle.schedule
    device = bundle.device
    steps = request.steps

    def check_stop() -> None:
        if should_stop is not None and should_stop():
            raise SamplingCancelled("sampling cancelled")

    # The grid and its timesteps: float64 schedule math, handed to the model as Python floats.
    sampling_grid = schedule.sampling_grid(steps, request.schedule, request.schedule_rho)
    grid, grid_t = sampling_grid.sigmas, sampling_grid.timesteps
    sigmas = grid.tolist()

    prediction_type = getattr(bundle, "prediction_type", "epsilon")
    # One plan per image (its texts; its method instance seeds a perturbation's randomness); the first combines
    # for all of them: every method works per image over the non-batch dimensions.
    plans = [GuidancePlan.from_request(r, prediction_type=prediction_type) for r in requests]
    plan = plans[0]
    layout = (plan.rows_of_kind, plan.guided_rows, plan.conditional_row, len(plan.texts))
    if any((p.rows_of_kind, p.guided_rows, p.conditional_row, len(p.texts)) != layout for p in plans[1:]):
        raise RequestError("a batch's prompts must give every image the same rows (an N-prompt batch: same prompts)")
    check_perturbation = getattr(bundle, "check_perturbation", None)
    if "perturbed" in plan.method.kinds and check_perturbation is not None:
        # Refused before anything samples, even where the method's window leaves no step perturbed (a typo in
        # its layers would otherwise pass unnoticed in such a run).
        # On a copy: a method may count its passes to seed each one (autoguidance's dropout).
        check_perturbation(copy.copy(plan.method).perturbation())
    check_stop()
    # Each distinct set of texts is encoded once, in one call of its own rows, as an unbatched run encodes it.
    text_sets = list(dict.fromkeys(p.texts for p in plans))
    image_set = [text_sets.index(p.texts) for p in plans]
    encoded, set_warnings = [], []
    for texts in text_sets:
        zero_if_empty = [
            bundle.force_zeros_for_empty_prompt and text == "" and i != plan.conditional_row
            for i, text in enumerate(texts)
        ]
        encoded.append(bundle.encode(list(texts), request.height, request.width, zero_if_empty=zero_if_empty))
        set_warnings.append(
            [
                f"{'prompt' if i == plan.conditional_row else 'text'} {shorten(text)!r} is longer than the text "
                f"encoders' context: its last {len(cut.split())} words are ignored, from {shorten(cut)!r}"
                for i, (text, cut) in enumerate(zip(texts, bundle.dropped_text(list(texts)), strict=True))
                if cut
            ]
        )
    cond = encoded[0]
    # a grid that starts low or repeats a sigma (MATH.md 7)
    image_warnings = [set_warnings[k] + list(sampling_grid.warnings) for k in image_set]
    cond_rows: dict[tuple[tuple[int, ...], int], Any] = {}

    def conditioning(rows: tuple[int, ...], batch: int) -> Any:
        """The rows of the encoded texts a call evaluates, for each of the batch's images (a a b b)."""
        key = (rows, batch)
        if key not in cond_rows:
            if len(encoded) == 1 or batch == 1:
                picked = cond if rows == tuple(range(cond.batch)) else cond.select(list(rows))
                cond_rows[key] = picked if batch == 1 else picked.repeat(batch)
            else:  # images with prompts of their own: row r of image b from its text set
                every = encoded[0].cat(encoded)
                width = len(plan.texts)
                cond_rows[key] = every.select([image_set[b] * width + r for r in rows for b in range(batch)])
        return cond_rows[key]

    def image_conditioning(rows: tuple[int, ...], image: int) -> Any:
        """One image's rows (a perturbed pass taken image by image)."""
        key = (rows, -1 - image_set[image])
        if key not in cond_rows:
            own = encoded[image_set[image]]
            cond_rows[key] = own if rows == tuple(range(own.batch)) else own.select(list(rows))
        return cond_rows[key]

    shape = (
        1,
        bundle.latent_channels,
        request.height // bundle.vae_scale_factor,
        request.width // bundle.vae_scale_factor,
    )
    noise = NoiseSource([r.seed for r in requests], shape, device)
    true_noise = noise.true_noise
    n = true_noise.to(device)
    init_noise_sigma = sampling_grid.init_noise_sigma
    x = n * init_noise_sigma

    solver = make_solver(request.solver, request.solver_params)
    # Per-step rows (engine.telemetry): references kept at each step's first stage, one Gram matrix per step.
    recorder = Recorder(batch=images) if getattr(request, "telemetry", True) else None
    evaluations = 0
    tnr_factors: list[float] = []
    loop_started = time.perf_counter()
    final_images: list[Image.Image | None] = [None] * images
    # The step being taken, for `predict` (a solver calls it once per stage, in any order it likes).
    step: dict[str, Any] = {}
    # Grid sigmas use the grid's own timesteps (diffusers' fractional linspace ones included); a solver's
    # intermediate sigmas (Heun's and RK's stages, dpm_2's midpoint) are interpolated in log sigma (MATH.md 1).
    grid_timestep = {}
    for sigma_i, t_i in zip(sigmas[:-1], grid_t.tolist(), strict=True):
        grid_timestep.setdefault(sigma_i, t_i)

    discrete = bool(getattr(request, "discrete_timesteps", False))

    def timestep(s: float) -> float:
        t = grid_timestep.get(s)
        t = float(schedule.sigma_to_t(s)) if t is None else float(t)
        # --discrete-timesteps: the nearest trained timestep, as ComfyUI and diffusers' multistep schedulers
        # hand the UNet (np.round: halves to even); the input scaling keeps the exact sigma (MATH.md 9).
        return float(round(t)) if discrete else t

    def predict(x_stage: torch.Tensor, s: float) -> Prediction:
        """One model evaluation at (x_stage, s): the step's predictions, batched, combined by its guidance."""
        nonlocal evaluations
        check_stop()
        guide: StepGuidance = step["guide"]
        rows = guide.normal_rows
        batch = x_stage.shape[0]
        model_input = (
            x_stage.expand(len(rows), *x_stage.shape[1:]) if batch == 1 else x_stage.repeat(len(rows), 1, 1, 1)
        )
        predictions = bundle.eps(model_input, s, timestep(s), conditioning(rows, batch))
        perturbed = None
        if guide.perturbed_rows:
            perturbations = [p.method.perturbation() for p in plans]
            if batch == 1 or not _seeded(perturbations[0]):
                perturbed = bundle.eps_perturbed(
                    x_stage, s, timestep(s), conditioning(guide.perturbed_rows, batch), perturbations[0]
                ).float()
            else:  # each image's pass with its own seed, as its unbatched run takes it
                perturbed = torch.cat(
                    [
                        bundle.eps_perturbed(
                            x_stage[b : b + 1], s, timestep(s), image_conditioning(guide.perturbed_rows, b), pert
                        ).float()
                        for b, pert in enumerate(perturbations)
                    ]
                )
        evaluations += len(guide.rows)
        # float64 predictions (a v-prediction model's eps, engine.models.bundle) stay float64: at zero terminal
        # SNR the step needs it (MATH.md 8); float32 and narrower become float32.
        wide = predictions.dtype == torch.float64
        raw = predictions if wide else predictions.float()
        first = step["first"] is None
        method_extras: dict[str, Any] | None = {} if first and recorder is not None else None
        den, ren = guide.pair(raw, ctx.true_noise, perturbed, x=x_stage, sigma=s, extras=method_extras)
        prediction = Prediction(x_stage, s, den, ren)
        if first:
            step["first"] = prediction
            if recorder is not None:
                c, u = cond_and_uncond(guide, raw, batch)
                info = guide.info
                recorder.first_stage(
                    index=info.index,
                    sigma=s,
                    sigma_next=info.sigma_next,
                    timestep=timestep(s),
                    tnr_factor=guide.S,
                    x=x_stage,
                    den=den,
                    cond=c,
                    uncond=u,
                    extras=method_extras,
                )
        return prediction

    ctx = SolverContext(sigmas=sigmas, predict=predict, noise=noise, true_noise=n)

    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        guide = plan.for_step(sigma, sigma_next, i, steps)
        if guide.S is not None:
            tnr_factors.append(guide.S)
        step.update(guide=guide, first=None)
        ctx.extras = {}  # what the solver adds for this step's row
        x = solver.step(ctx, x, i)
        if not bool(torch.isfinite(x).all()):
            bad = tuple(b for b in range(images) if not bool(torch.isfinite(x[b]).all()))
            where = f" (image {', '.join(str(b + 1) for b in bad)} of a batch of {images})" if images > 1 else ""
            error = SamplingError(
                f"non-finite latent at step {i + 1} of {steps} (sigma {sigma:.4g} -> {sigma_next:.4g}){where}; try fewer steps, a smaller scale or float32"
            )
            error.images = bad
            raise error
        if recorder is not None:
            recorder.end_step(evaluations, ctx.extras)

        if on_step is not None:
            first: Prediction = step["first"]
            denoised_all = first.denoised.detach().float().cpu()
            last = i == steps - 1
            rows = recorder.last_rows() if recorder is not None else []
            elapsed = time.perf_counter() - started
            for b in range(images):
                # Each image is decoded alone (as its unbatched run decodes it: no batched-convolution drift).
                denoised = denoised_all if images == 1 else denoised_all[b : b + 1]
                preview = None
                if request.preview_every and ((i + 1) % request.preview_every == 0 or last):
                    preview = bundle.preview(denoised)
                image = None
                if request.decode_every and ((i + 1) % request.decode_every == 0 or last):
                    if last:
                        final_images[b] = decoded_to_image(bundle.decode(x if images == 1 else x[b : b + 1]))
                        image = final_images[b]
                    else:
                        image = decoded_to_image(bundle.decode(denoised.to(device)))
                on_step(
                    b,
                    StepEvent(
                        index=i,
                        steps=steps,
                        sigma=sigma,
                        sigma_next=sigma_next,
                        denoised=denoised,
                        preview=preview,
                        image=image,
                        tnr_factor=guide.S,
                        evaluations=evaluations,
                        elapsed=elapsed,
                        rows=rows[b : b + 1] if images > 1 else rows,
                    ),
                )
    loop_seconds = time.perf_counter() - loop_started

    latents = x.detach().float().cpu()
    if images > 1 and all(f is None for f in final_images) and decode_together(images, request.height, request.width):
        # Small images: the batch's final latents in one decoder call (see decode_together).
        decoded = bundle.decode(x)
        final_images = [decoded_to_image(decoded[b : b + 1]) for b in range(images)]
    for b in range(images):
        if final_images[b] is None:
            final_images[b] = decoded_to_image(bundle.decode(x if images == 1 else x[b : b + 1]))
    seconds = time.perf_counter() - started
    telemetry = recorder.tables() if recorder is not None else None
    results = []
    for b, image_request in enumerate(requests):
        stats = {
            # A batch's images share its time: each records its share, so seconds add up to the wall time.
            "seconds": seconds / images,
            "seconds_per_step": loop_seconds / steps / images,
            "model_evaluations": evaluations,  # per image: a batched call of k predictions per image counts k
            "planned_evaluations": planned_evaluations(image_request, sigmas),
            "steps": steps,
            "device": str(device),
            "dtype": str(bundle.dtype).removeprefix("torch."),
            "sigmas": sigmas,
            "timesteps": grid_t.tolist(),
            "schedule": sampling_grid.kind,  # the kind sampled on ("default" may have fallen back to trailing)
            "init_noise_sigma": init_noise_sigma,
            "tnr_factors": tnr_factors if plan.uses_tnr else None,
            "equivalent_cfg_scale": plan.equivalent_cfg_scale,
            "request": image_request.to_dict(),
            "warnings": image_warnings[b],
        }
        if images > 1:
            # The model saw this image inside a batch: a re-run alone may differ in the last bits (docs/batching.md).
            stats["batch"] = {"size": images, "index": b, "seconds": seconds}
        results.append(
            Result(
                latent=latents if images == 1 else latents[b : b + 1],
                image=final_images[b],
                true_noise=true_noise if images == 1 else true_noise[b : b + 1],
                stats=stats,
                request=image_request,
                telemetry=telemetry[b : b + 1] if telemetry is not None and images > 1 else telemetry,
            )
        )
    return results
