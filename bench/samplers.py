"""Seconds per image of every sampler beside diffusers' scheduler for it, on the same model and grid.

    python bench/samplers.py [--model DIR|embedded|tiny] [--steps 20] [--repeats 3] [--device auto] [--only a,b]

Prompt to RGB image on both sides (text encoding, the sampling loop, the decode), CFG 5, trailing spacing (a
grid every diffusers scheduler and the lab share), run alternately in one process after a warm-up each. The
diffusers side is its pipeline with the scheduler configured as the parity tests do
(tests/test_samplers_diffusers.py). Prints each side's median seconds per image, the ratio ours/diffusers as
the median of back-to-back pairs (wall time) and as the ratio of CPU times (the goal is <= 1 for each). A sampler diffusers does not have prints ours alone. Without --model
it builds the tests' tiny random SDXL-topology model; `embedded` is data/models/shapes-xl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEED = 0
# sampler -> (diffusers scheduler class, its config over the model's, what `step` gets, our solver params)
TWINS: dict[str, tuple[str | None, dict[str, Any], dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}, {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}),
    "heun": ("HeunDiscreteScheduler", {}, {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}, {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}, {}),
    "lms": ("LMSDiscreteScheduler", {}, {}),
    "dpmpp_2s_ancestral": (None, {}, {}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {"noise_sampler_seed": SEED}, {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": False},
        {},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "lower_order_final": False},
        {},
    ),
    "dpmpp_3m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun", "lower_order_final": False},
        {},
    ),
    "res_multistep": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "heun", "lower_order_final": False},
        {},
    ),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}, {}),
    "ddpm": ("DDPMScheduler", {}, {}),
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}, {}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 3}, {}),
    "deis": ("DEISMultistepScheduler", {"solver_order": 3}, {}),
    "ipndm": (None, {}, {}),
    "midpoint": (None, {}, {}),
    "rk4": (None, {}, {}),
}


# diffusers' sde-dpmsolver++ draws plain Gaussian noise; the lab's 2M/3M SDE take k-diffusion's Brownian-tree
# increments. Its scheduler is handed the same Brownian increments (what the parity tests do), so both sides
# pay for the tree; a second row compares with diffusers' own Gaussian noise.
BROWNIAN_FED = ("dpmpp_2m_sde", "dpmpp_3m_sde")


def feed_brownian_noise(scheduler: Any, seed: int) -> None:
    """Wrap `scheduler.step` to pass the lab's Brownian increment of each step as `variance_noise`."""
    import torch

    from engine.noise import BrownianNoise

    original = scheduler.step
    state: dict[str, Any] = {}

    def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        sigmas = scheduler.sigmas.tolist()
        if state.get("sigmas") != sigmas:  # a new run (set_timesteps): a new tree over its grid
            nonzero = [s for s in sigmas if s > 0]
            state.update(sigmas=sigmas, noise=BrownianNoise([seed], tuple(sample.shape), min(nonzero), max(nonzero)))
        i = scheduler.index_for_timestep(timestep) if scheduler.step_index is None else scheduler.step_index
        a, b = sigmas[i], sigmas[i + 1]
        kwargs["variance_noise"] = state["noise"](a, b) if b > 0 else torch.zeros_like(sample)
        return original(model_output, timestep, sample, *args, **kwargs)

    scheduler.step = step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="a diffusers SDXL directory, 'embedded' or 'tiny' (default)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=None, help="width = height (default: the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", default="", help="comma-separated samplers (default: every registered one)")
    parser.add_argument("--prompt", default="a red circle on a white background")
    parser.add_argument("--negative", default="blurry")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.models import load_bundle
    from engine.request import GenerationRequest
    from engine.sampler import sample
    from engine.units import SOLVERS

    names = [n for n in args.only.split(",") if n] or list(SOLVERS.names())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model == "tiny":
            from engine.models.tiny import build_tiny_sdxl

            model = str(build_tiny_sdxl(Path(tmp) / "tiny-sdxl"))
        bundle = load_bundle(model, args.device, args.dtype)
        model_dir = str(bundle.path) if model == "embedded" else model
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            model_dir, torch_dtype=bundle.dtype, local_files_only=True
        ).to(bundle.device)
        pipe.set_progress_bar_config(disable=True)
        base_config = dict(pipe.scheduler.config, timestep_spacing="trailing")
        height, width = (args.size, args.size) if args.size else bundle.default_size

        def sync() -> None:
            if bundle.device.type == "cuda":
                torch.cuda.synchronize()

        for name in names:
            twin, config, params = TWINS.get(name, (None, {}, {}))
            request = GenerationRequest(
                prompt=args.prompt,
                negative_prompt=args.negative,
                model=model,
                width=width,
                height=height,
                steps=args.steps,
                solver=name,
                solver_params=params,
                schedule="trailing",
                guidance="cfg",
                scale=args.scale,
                seed=SEED,
                preview_every=0,
            )

            def ours(request: GenerationRequest = request) -> None:
                sample(bundle, request)
                sync()

            runs = [("ours", ours)]
            brownian = name in BROWNIAN_FED
            if twin is not None:
                pipe.scheduler = getattr(diffusers, twin).from_config(base_config, **config)
                if brownian:
                    feed_brownian_noise(pipe.scheduler, SEED)

                def theirs() -> None:
                    latents = pipe(
                        args.prompt,
                        negative_prompt=args.negative or None,
                        num_inference_steps=args.steps,
                        height=height,
                        width=width,
                        guidance_scale=args.scale,
                        output_type="latent",
                        generator=torch.Generator("cpu").manual_seed(SEED),
                    ).images
                    with torch.inference_mode():
                        vae = pipe.vae
                        if vae.dtype != torch.float32:
                            vae.to(torch.float32)
                        image = vae.decode(latents.float() / vae.config.scaling_factor).sample
                        pipe.image_processor.postprocess(image, output_type="pil")
                    sync()

                runs.append(("diffusers", theirs))
            times: dict[str, list[float]] = {label: [] for label, _ in runs}
            cpu: dict[str, list[float]] = {label: [] for label, _ in runs}
            for _, run in runs:
                run()  # warm-up
            for _ in range(args.repeats):
                for label, run in runs:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    run()
                    times[label].append(time.perf_counter() - started)
                    cpu[label].append(time.process_time() - started_cpu)
            # On a shared host the load drifts: the median of back-to-back pairs (wall time) and the CPU time the
            # process spent (all its threads; what other processes' load does not change) are both printed.
            ours_s, ours_cpu = statistics.median(times["ours"]), statistics.median(cpu["ours"])
            if twin is None:
                rows.append((name, ours_s, None, None, ours_cpu, None))
            else:
                paired = statistics.median(o / d for o, d in zip(times["ours"], times["diffusers"], strict=True))
                their_cpu = statistics.median(cpu["diffusers"])
                rows.append((name, ours_s, statistics.median(times["diffusers"]), paired, ours_cpu, their_cpu))
            print(f"{name:20s} done", file=sys.stderr, flush=True)
            if brownian:  # and once more against diffusers' own (Gaussian, not Brownian) SDE noise
                pipe.scheduler = getattr(diffusers, twin).from_config(base_config, **config)
                gaussian, gaussian_cpu = [], []
                for _ in range(args.repeats):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    theirs()
                    gaussian.append(time.perf_counter() - started)
                    gaussian_cpu.append(time.process_time() - started_cpu)
                their_s = statistics.median(gaussian)
                rows.append(
                    (
                        f"{name} (vs Gaussian)",
                        ours_s,
                        their_s,
                        ours_s / their_s,
                        ours_cpu,
                        statistics.median(gaussian_cpu),
                    )
                )

    threads = f", {torch.get_num_threads()} CPU threads" if bundle.device.type == "cpu" else ""
    print(f"model {model} on {bundle.device} ({str(bundle.dtype).removeprefix('torch.')}{threads}), {width}x{height}")
    print(f"cfg {args.scale}, {args.steps} steps, trailing, {args.repeats} alternating repeats, prompt to image")
    print("seconds per image (medians); ratio = ours/diffusers: wall time (median of back-to-back pairs), CPU time")
    header = f"{'sampler':28s} {'ours s':>7s} {'diff. s':>7s} {'wall ratio':>10s} {'ours cpu':>8s} {'diff. cpu':>9s}"
    print(header + f" {'cpu ratio':>9s}")
    for name, ours_s, their_s, paired, ours_cpu, their_cpu in rows:
        if their_s is None:
            print(f"{name:28s} {ours_s:7.3f} {'-':>7s} {'(no twin)':>10s} {ours_cpu:8.3f} {'-':>9s}")
            continue
        print(
            f"{name:28s} {ours_s:7.3f} {their_s:7.3f} {paired:10.3f} {ours_cpu:8.3f} {their_cpu:9.3f}"
            f" {ours_cpu / their_cpu:9.3f}"
        )
    print("goal: ours/diffusers <= 1 for each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
