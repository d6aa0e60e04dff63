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
