"""Wall time of our sampler vs diffusers' StableDiffusionXLPipeline: same model, same settings.

    python bench/engine_vs_diffusers.py [--model DIR] [--steps 20] [--repeats 5] [--device auto]

Euler + CFG, both sides from prompt to RGB image (text encoding, the sampling loop, the VAE decode), run
alternately in one process after a warm-up each, so that caches, thread pools and clocks affect both alike.
Without --model it builds the tests' tiny random SDXL-topology model in a temporary directory. Prints the
median seconds of each side, the ratio ours/diffusers (the goal is <= 0.9) as a ratio of medians and as the
median of back-to-back pairs, and checks that the final latents agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a diffusers SDXL directory (default: a tiny random one, built now)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=None, help="width = height (default: the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt", default="a red circle on a white background")
    parser.add_argument("--negative", default="blurry")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 is steadier on a busy host)"
    )
    parser.add_argument("--profile", action="store_true", help="print a torch profile of one of our runs")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from engine.models import load_bundle
    from engine.request import GenerationRequest
    from engine.sampler import sample

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from engine.models.tiny import build_tiny_sdxl

            model = str(build_tiny_sdxl(Path(tmp) / "tiny-sdxl"))
        bundle = load_bundle(model, args.device, args.dtype)
        pipe = StableDiffusionXLPipeline.from_pretrained(model, torch_dtype=bundle.dtype, local_files_only=True)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe = pipe.to(bundle.device)
        pipe.set_progress_bar_config(disable=True)
        height, width = (args.size, args.size) if args.size else bundle.default_size
        request = GenerationRequest(
            prompt=args.prompt,
            negative_prompt=args.negative,
            model=model,
            width=width,
            height=height,
            steps=args.steps,
            solver="euler",
            # diffusers' grid by name: "default" leaves a grid that starts low for trailing (MATH.md 7).
            schedule=bundle.schedule.resolve_kind("default"),
            guidance="cfg",
            scale=args.scale,
            seed=0,
            preview_every=0,
        )

        def sync() -> None:
            if bundle.device.type == "cuda":
                torch.cuda.synchronize()

        def ours() -> torch.Tensor:
            result = sample(bundle, request)
            sync()
            return result.latent

        def theirs() -> torch.Tensor:
            latents = pipe(
                args.prompt,
                negative_prompt=args.negative or None,
                num_inference_steps=args.steps,
                height=height,
                width=width,
                guidance_scale=args.scale,
                output_type="latent",
                generator=torch.Generator("cpu").manual_seed(0),
            ).images
            # diffusers' image path, as in output_type="pil" (SDXL upcasts its VAE to float32 when force_upcast).
            with torch.inference_mode():
                vae = pipe.vae
                if vae.dtype != torch.float32:
                    vae.to(torch.float32)
                image = vae.decode(latents.float() / vae.config.scaling_factor).sample
                pipe.image_processor.postprocess(image, output_type="pil")
            sync()
            return latents.float().cpu()

        ours_latent, their_latent = ours(), theirs()  # warm-up, and the parity check
        difference = ((ours_latent - their_latent).abs().max() / their_latent.abs().max()).item()
        times: dict[str, list[float]] = {"ours": [], "diffusers": []}
        for _ in range(args.repeats):
            for name, run in (("ours", ours), ("diffusers", theirs)):
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bundle.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                ours()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    ours_median, their_median = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    threads = f", {torch.get_num_threads()} CPU threads" if bundle.device.type == "cpu" else ""
    print(f"model {model} on {bundle.device} ({str(bundle.dtype).removeprefix('torch.')}{threads}), {width}x{height}")
    print(f"euler + cfg {args.scale}, {args.steps} steps, {args.repeats} alternating repeats, prompt to image")
    print(f"ours       median {ours_median:.3f} s   ({', '.join(f'{t:.3f}' for t in times['ours'])})")
    print(f"diffusers  median {their_median:.3f} s   ({', '.join(f'{t:.3f}' for t in times['diffusers'])})")
    # Each repeat runs ours then diffusers back to back: the median of those paired ratios is steadier than
    # the ratio of medians when the host's load drifts (a shared machine).
    paired = statistics.median(o / d for o, d in zip(times["ours"], times["diffusers"], strict=True))
    print(f"ratio ours/diffusers {ours_median / their_median:.3f} (medians), {paired:.3f} (median of paired runs)")
    print("goal: <= 0.9")
    print(f"final latents: max relative difference {difference:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
