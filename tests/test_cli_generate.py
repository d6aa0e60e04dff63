"""`tnr-lab generate` on the tiny model: files, JSON summary, history row; every bad input is one line, exit 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tnr_tui.cli import main
from tnr_tui.services.history import open_store

REPO = Path(__file__).resolve().parents[1]


def test_generate_writes_png_latent_json_and_lands_in_the_history(tmp_path, tiny_sdxl_dir, capsys):
    out, latent = tmp_path / "img" / "out.png", tmp_path / "out.safetensors"
    rc = main(
        [
            "--data-dir",
            str(tmp_path / "home"),
            "generate",
            "--model",
            str(tiny_sdxl_dir),
            "--prompt",
            "a red circle",
            "--negative",
            "blue",
            "--solver",
            "heun",
            "--guidance",
            "tnr-cfg",
            "--scale",
            "3",
            "--tnr-power",
            "0.5",
            "--steps",
            "2",
            "--seed",
            "11",
            "--width",
            "64",
            "--height",
            "48",
            "--out",
            str(out),
            "--save-latent",
            str(latent),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["image"] == str(out) and summary["latent"] == str(latent)
    # heun: 2 stages on the first step, Euler to sigma 0 on the last; tnr-cfg batches 2 predictions.
    assert summary["model_evaluations"] == (2 + 1) * 2
    assert summary["seconds"] > 0 and (summary["width"], summary["height"]) == (64, 48)
    assert "[" in captured.err and "2/2 steps" in captured.err  # the progress bar went to stderr
    assert load_file(str(latent))["latent"].shape == (1, 4, 6, 8)

    store = open_store(tmp_path / "home")
    run = store.get_run(summary["run_id"])
    assert run.status == "done" and run.origin == "cli"
    assert (run.solver, run.guidance, run.scale, run.steps, run.seed) == ("heun", "tnr-cfg", 3.0, 2, 11)
    assert run.request["tnr_power"] == 0.5
    # the history keeps its own files; --out and --save-latent hold the same bytes
    stored = {o.kind: store.resolve(o.path) for o in run.outputs}
    assert set(stored) == {"image", "latent"} and all(p.parent.parent == store.outputs_dir for p in stored.values())
    assert stored["image"].read_bytes() == out.read_bytes() and stored["latent"].read_bytes() == latent.read_bytes()


def test_weighted_prompts_build_the_n_prompt_form(tmp_path, tiny_sdxl_dir, capsys):
    rc = main(
        ["--data-dir", str(tmp_path / "home"), "generate", "--model", str(tiny_sdxl_dir), "--steps", "1"]
        + ["--weighted", "a red circle:1.5", "--weighted", "a blue square:-0.5", "--width", "32", "--height", "32"]
        + ["--out", str(tmp_path / "w.png"), "--json"]
    )
    assert rc == 0, capsys.readouterr().err
    run = open_store(tmp_path / "home").list_runs()[0]
    assert run.request["prompts"] == [{"text": "a red circle", "scale": 1.5}, {"text": "a blue square", "scale": -0.5}]
    assert run.prompt == "a red circle"


BAD_INPUTS = [
    (["--prompt", "x", "--steps", "0"], "steps must be a whole number in 1..10000"),
    (["--prompt", "x", "--steps", "many"], "steps must be a whole number"),
    (["--prompt", "x", "--solver", "dpm"], "unknown solver 'dpm'; choose one of: euler, "),
    (["--prompt", "x", "--guidance", "pagg"], "unknown guidance method 'pagg'"),
    (["--prompt", "x", "--scale", "nan"], "must be a finite number"),
    (["--prompt", "x", "--guidance", "apg", "--guidance-param", "eta=foo"], "eta must be a number, got 'foo'"),
    (
        ["--prompt", "x", "--guidance-param", "eta=1"],
        "--guidance-param eta: the guidance method 'cfg' takes no parameters",
    ),
    (["--prompt", "x", "--guidance", "apg", "--guidance-param", "eta"], "--guidance-param expects NAME=VALUE"),
    (["--prompt", "x", "--solver-param", "order=3"], "--solver-param order: the solver 'euler' takes no parameters"),
    (["--prompt", "x", "--width", "30"], "width must be a positive multiple of 8"),
    (["--prompt", "x", "--seed", "-1"], "seed must be a whole number in 0.."),
    (["--prompt", "x", "--cfg-rescale", "2"], "CFG rescale must be between 0 and 1"),
    (["--prompt", "x", "--device", "tpu"], "unknown device 'tpu'"),
    (["--prompt", "x", "--weighted", "no scale here"], "--weighted expects TEXT:SCALE"),
    (["--weighted", "only one:1"], "the N-prompt form needs at least two prompts"),
    ([], "give --prompt TEXT"),
    (["--prompt", "x", "--sigma-min", "2", "--sigma-max", "1"], "min (2.0) is larger than max (1.0)"),
    (["--prompt", "x", "--sigma-min", "-1"], "guidance sigma min must be at least 0.0"),
    (["--prompt", "x", "--schedule-rho", "0"], "schedule rho must be positive"),
    (["--prompt", "x", "--out-override"], None),  # argparse's own message (unknown flag): still exit 2
]


def run_cli(args, env=None, cwd=REPO):
    code = (
        "import sys; from tnr_tui.cli import main; rc = main(sys.argv[1:]); "
        "sys.stderr.write('HEAVY=%s' % any(m in sys.modules for m in ('torch', 'diffusers', 'transformers'))); "
        "sys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_flags_give_one_line_and_exit_2_before_any_model_loads(tmp_path, args, message):
    out = tmp_path / "o.png"
    if args and args[-1] == "--out-override":
        args = args[:-1] + ["--bogus"]
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from tnr_tui.cli import main; sys.exit(main(sys.argv[1:]))"]
        + ["--data-dir", str(tmp_path / "home"), "generate", "--out", str(out), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    if message is not None:
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
        assert message in proc.stderr
        assert proc.stderr.startswith("tnr-lab: error: ")
    assert not out.exists() and not (tmp_path / "home").exists()  # refused before the history or a model


def test_bad_input_does_not_import_torch(tmp_path):
    proc = run_cli(["--data-dir", str(tmp_path), "generate", "--prompt", "x", "--steps", "0", "--out", "x.png"])
    assert proc.returncode == 2 and proc.stderr.endswith("HEAVY=False")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "x.jpg"], "--out must name a .png file"),
        (["--save-latent", "l.pt"], "--save-latent must name a .safetensors file"),
    ],
)
def test_bad_paths_are_refused(tmp_path, args, message):
    argv = ["--data-dir", str(tmp_path / "home"), "generate", "--prompt", "x", "--out", str(tmp_path / "o.png")]
    assert main(argv + args) == 2


def test_missing_model_and_missing_embedded_model_are_one_line_errors(tmp_path, capsys, monkeypatch):
    home = ["--data-dir", str(tmp_path / "home")]
    rc = main(
        home + ["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--out", str(tmp_path / "a.png")]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tnr-lab: error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert "nowhere" in errors[0] and "no such file or directory" in errors[0]

    monkeypatch.setenv("TNR_LAB_EMBEDDED_MODEL", str(tmp_path / "no-embedded"))
    rc = main(home + ["generate", "--prompt", "x", "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tnr-lab: error: ")]
    assert rc == 2 and len(errors) == 1 and "embedded model" in errors[0] and "Traceback" not in err
    runs = open_store(tmp_path / "home").list_runs()
    assert [r.status for r in runs] == ["failed", "failed"]


def test_a_corrupt_history_stops_generate_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "history.sqlite").write_bytes(b"garbage" * 100)
    rc = main(["--data-dir", str(tmp_path / "home"), "generate", "--prompt", "x", "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt" in err and err.count("\n") == 1
    assert not (tmp_path / "a.png").exists()


def test_sigma_window_and_rho_flags_reach_the_request(tmp_path, tiny_sdxl_dir, capsys):
    rc = main(
        ["--data-dir", str(tmp_path / "home"), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "a red circle"]
        + ["--steps", "4", "--schedule", "karras", "--schedule-rho", "3", "--sigma-min", "0.5", "--sigma-max", "5"]
        + ["--out", str(tmp_path / "o.png"), "--json"]
    )
    assert rc == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    store = open_store(tmp_path / "home")
    try:
        request = store.get_run(run_id).request
    finally:
        store.close()
    assert (request["schedule_rho"], request["guidance_sigma_min"], request["guidance_sigma_max"]) == (3.0, 0.5, 5.0)


def test_a_prompt_past_77_tokens_is_a_warning_kept_in_the_history(tmp_path, tiny_sdxl_dir, capsys):
    prompt = " ".join(["a red circle on a blue background"] * 15 + ["and a green triangle"])
    rc = main(
        ["--data-dir", str(tmp_path / "home"), "generate", "--model", str(tiny_sdxl_dir), "--prompt", prompt]
        # 10 steps: 1 step of leading spacing starts low, which is a warning of its own (MATH.md 7).
        + ["--steps", "10", "--out", str(tmp_path / "o.png"), "--json"]
    )
    assert rc == 0
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert "longer than the text encoders' context" in warning and "words are ignored" in warning
    summary = json.loads(captured.out)
    assert summary["warnings"] == [warning.removeprefix("warning: ")]
    store = open_store(tmp_path / "home")
    try:
        assert store.get_run(summary["run_id"]).stats["warnings"] == summary["warnings"]
    finally:
        store.close()


def test_a_directory_as_save_latent_is_refused_before_sampling(tmp_path, tiny_sdxl_dir, capsys):
    (tmp_path / "d.safetensors").mkdir()
    argv = ["--data-dir", str(tmp_path / "home"), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "x"]
    assert main([*argv, "--out", str(tmp_path / "o.png"), "--save-latent", str(tmp_path / "d.safetensors")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "home").exists() or not list((tmp_path / "home").rglob("*.png"))


def test_sigterm_during_generate_records_the_run_cancelled_like_ctrl_c(tmp_path, tiny_sdxl_dir):
    home, out = tmp_path / "home", tmp_path / "o.png"
    args = ["--data-dir", str(home), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "x", "--steps", "1000",
            "--schedule", "karras", "--width", "64", "--height", "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "tnr_tui", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in proc.stderr:  # wait until it samples: the run is recorded `running` by then
        lines.append(line)
        if line.startswith("sampling on"):
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    err = "".join(lines) + rest
    assert proc.returncode == 143, err
    assert "tnr-lab: terminated" in err and "Traceback" not in err
    with open_store(home) as store:
        (run,) = store.list_runs()
        assert run.status == "cancelled" and run.error == "terminated (SIGTERM)"
        assert run.outputs == [] and list(store.outputs_dir.rglob("*")) == []
    assert not out.exists()


def test_unit_parameters_reach_the_request_and_the_history(tmp_path, tmp_data_dir, capsys):
    out = tmp_path / "apg.png"
    code = main(
        [
            "generate",
            "--prompt",
            "a red circle on a blue background",
            "--steps",
            "4",
            "--solver",
            "dpmpp_2m",
            "--guidance",
            "apg",
            "--guidance-param",
            "eta=0",
            "--guidance-param",
            "adaptive-projected-guidance-rescale=5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    with open_store(tmp_data_dir) as store:
        run = store.list_runs()[0]
    assert run.solver == "dpmpp_2m" and run.guidance == "apg"
    assert run.request["guidance_params"] == {"eta": 0.0, "adaptive_projected_guidance_rescale": 5.0}
    assert run.request["format"] == 3


def test_long_options_are_never_abbreviated(capsys):
    # argparse's default would read --tnr as --tnr-power (issue 13); --tnr is now its own flag, taking no value.
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--tnr", "2", "--out", "x.png"])
    assert "unrecognized arguments: 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--prompt", "x", "--tnr-p", "2", "--out", "x.png"])
    assert "unrecognized arguments: --tnr-p" in capsys.readouterr().err


def test_units_command_lists_every_registered_unit_with_its_parameters(capsys):
    from engine import units

    assert main(["units"]) == 0
    listing = capsys.readouterr().out
    for registry in (units.SOLVERS, units.GUIDANCE, units.SCHEDULES):
        for unit in registry:
            assert f"\n{unit.name}: " in "\n" + listing
            for param in unit.params:
                assert f"    {param.name}=" in listing
