"""LoRAs outside `generate` and `sweep` (issue 14: every family and LoRA runs from the study; the history shows
what a run loaded): `history show` lists each LoRA of a run (path, weight, sha256 prefix), and
`tnr-lab study --lora PATH[:WEIGHT]` applies the LoRAs to every arm, names them in study.md's header, and
says a bad LoRA in one line before anything samples."""

from __future__ import annotations

from tnr_tui.cli import main
from tnr_tui.services.history import open_store


def test_history_show_lists_each_lora_of_the_run(tmp_path, capsys):
    home = tmp_path / "home"
    sha = "0123456789abcdef" * 4
    with open_store(home) as store:
        with_loras = store.create_run(
            {
                "prompt": "a fox",
                "solver": "euler",
                "guidance": "cfg",
                "steps": 4,
                "seed": 1,
                "format": 3,
                "loras": [
                    {"path": "/loras/style.safetensors", "weight": 0.75, "sha256": sha},
                    {"path": "detail.safetensors", "weight": 1.0},  # queued: its file not read yet
                ],
            }
        )
        plain = store.create_run({"prompt": "a cat", "solver": "euler", "guidance": "cfg", "steps": 4, "seed": 2})
    assert main(["--data-dir", str(home), "history", "show", with_loras]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  lora ")]
    assert lines == [
        "  lora      /loras/style.safetensors  weight 0.75  sha256 0123456789ab",
        "  lora      detail.safetensors  weight 1  sha256 (not read)",
    ]
    assert main(["--data-dir", str(home), "history", "show", plain]) == 0
    assert "  lora " not in capsys.readouterr().out


def kohya(path, unet, seed, widen=0):
    """A kohya-layout LoRA of random rank-2 weights on the UNet's cross-attention keys (`widen`: wrong shapes)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, m in unet.named_modules():
        if name.endswith("attn2.to_k") and hasattr(m, "in_features"):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(2, m.in_features + widen, generator=g) * 0.3
            state[f"{key}.lora_up.weight"] = torch.randn(m.out_features, 2, generator=g) * 0.3
    save_file(state, str(path))
    return path


def study_args(model, out, *extra):
    # the smallest study: one section, one solver, one budget of 2 steps, 2 seeds (none and tnr: 4 images)
    args = ["study", "--model", str(model), "--sections", "solvers", "--solvers", "euler", "--budgets", "2"]
    return [*args, "--samples", "2", "--width", "64", "--height", "64", "--keep-images", "--out", str(out), *extra]


def images_of(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


def test_study_lora_applies_to_every_arm_and_study_md_names_it(tiny_sd15_dir, tmp_path, capsys):
    import json

    import pytest

    pytest.importorskip("peft")
    from engine.loras import file_hashes
    from engine.models import load_bundle

    lora = kohya(tmp_path / "style.safetensors", load_bundle(str(tiny_sd15_dir)).unet, 1)
    plain, styled = tmp_path / "plain", tmp_path / "styled"
    assert main(study_args(tiny_sd15_dir, plain)) == 0
    code = main(study_args(tiny_sd15_dir, styled, "--lora", f"{lora}:0.5"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    before, after = images_of(plain), images_of(styled)
    assert sorted(before) == sorted(after) and len(before) == 4  # the same arms and seeds, the labels unchanged
    assert all(before[name] != after[name] for name in before)  # every arm's every image sampled with it
    md = (styled / "study.md").read_text()
    header = md.split("\n## ")[0]
    assert f"LoRAs: {lora} weight 0.5 (sha256 {file_hashes(lora)[0][:12]})" in header
    assert f"--lora {lora}:0.5" in header  # the command that reproduces it
    assert "LoRA" not in (plain / "study.md").read_text().split("\n## ")[0]
    assert json.loads((styled / "study.json").read_text())["config"]["loras"] == [[str(lora), 0.5]]


def test_a_bad_study_lora_is_one_line_before_anything_samples(tiny_sd15_dir, tmp_path, capsys):
    import pytest

    pytest.importorskip("peft")
    from engine.models import load_bundle

    missing = tmp_path / "missing.safetensors"
    pickled = tmp_path / "old.ckpt"
    pickled.write_bytes(b"not a safetensors file")
    wrong = kohya(tmp_path / "wrong.safetensors", load_bundle(str(tiny_sd15_dir)).unet, 2, widen=3)
    for lora, says in ((missing, "no such file"), (pickled, "refusing a pickled file"), (wrong, "")):
        out = tmp_path / f"out-{lora.stem}"
        assert main(study_args(tiny_sd15_dir, out, "--lora", f"{lora}:0.5")) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and str(lora) in err and says in err, err
        assert "study:" not in captured.out  # nothing sampled: no arm was announced
        assert not (out / "images").exists() and not (out / "study.md").exists()
