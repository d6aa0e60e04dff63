"""A sweep over LoRAs (issue 14, item 5): --lora applies to every cell, --lora-axis adds one row per LoRA set;
each cell's run records its LoRAs, the sheet labels name them, and cells without LoRAs keep their old keys."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("peft")


def kohya(path, unet, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in unet.named_modules():
        if name.endswith("attn2.to_k") and hasattr(m, "in_features"):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(2, m.in_features, generator=g) * 0.3
            state[f"{key}.lora_up.weight"] = torch.randn(m.out_features, 2, generator=g) * 0.3
    save_file(state, str(path))
    return path


def test_sweep_lora_axis(tiny_sd15_dir, tmp_path, tmp_data_dir, capsys):
    from engine.models import load_bundle
    from tnr_tui.cli import main
    from tnr_tui.services.cells import GridCell
    from tnr_tui.services.sweep import SweepSpec, plan

    unet = load_bundle(str(tiny_sd15_dir)).unet
    a, b = kohya(tmp_path / "a.safetensors", unet, 1), kohya(tmp_path / "b.safetensors", unet, 2)
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_sd15_dir), "--prompt", "a red circle", "--guidance", "cfg", "--steps", "2"]
    args += ["--seeds", "1", "--width", "64", "--height", "64", "--out", str(out), "--lora", f"{a}:0.5"]
    args += ["--lora-axis", "none", "--lora-axis", f"{b}:1", "--lora-axis", f"{b}:0.25"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["loras"] for r in rows] == [f"{a}:0.5", f"{a}:0.5 {b}:1", f"{a}:0.5 {b}:0.25"]
    assert len({r["run_id"] for r in rows}) == 3 and all(r["run_id"] for r in rows)
    images = [r["image"] for r in rows]
    assert len({open(i, "rb").read() for i in images}) == 3  # three different images
    spec = SweepSpec.from_dict(json.loads((out / "sweep.json").read_text())["spec"])
    assert spec.lora_sets[2] == ((str(b), 0.25),) and spec.loras == ((str(a), 0.5),)
    cells = plan(spec)
    assert cells[2].label.endswith("a:0.5 b:0.25") and cells[2].request().loras[1].path == str(b)
    # cells without LoRAs keep their keys (old sweeps resume), and a spec without them its id
    assert "loras" not in GridCell("cfg", 5.0, "euler", 2, prompt="x", seed=1).key
    plain = SweepSpec(prompts=("x",))
    assert "loras" not in plain.to_dict() and "lora_sets" not in plain.to_dict()
