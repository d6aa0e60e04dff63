"""Start-up (issue 11, item 6): a run imports the library modules it uses, not whole libraries.

engine/models/imports.py defers the package `__init__` files that gather every model of diffusers and
transformers (and scipy.stats); these tests hold that a fresh `generate` leaves them unrun, that what it loads
is the libraries' own classes and gives bit-identical latents to a plain import, that a package's `__init__`
runs as soon as someone needs one of its names (a perturbed pass needs diffusers.hooks), and that a deferred
import that fails (a library's layout changed) falls back to the plain import. bench/startup.py measures it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.models import imports
from engine.models.imports import DEFERRED

REPO = Path(__file__).resolve().parents[1]

# What both child interpreters sample; the parent samples it again with plain imports.
SAMPLES = r"""
from engine.request import GenerationRequest
from engine.sampler import sample

def request(guidance):
    # pag: its perturbed pass at every step (its default window stops before the first of 3 steps)
    params = {"perturbed_guidance_start": 0.0, "perturbed_guidance_stop": 1.0} if guidance == "pag" else {}
    return GenerationRequest(prompt="a red circle", negative_prompt="blurry", model=MODEL, width=64, height=64,
                             steps=3, seed=11, guidance=guidance, scale=4.0, guidance_params=params,
                             preview_every=0)

def latents(bundle, guidances, loras=()):
    return {g: sample(bundle, request(g).replace(loras=tuple(loras))).latent.contiguous() for g in guidances}
"""

FRESH_GENERATE = (
    r"""
import json, sys
MODEL, DATA, OUT, SINGLE, LORA = sys.argv[1:6]
from tnr_tui.cli import main

code = main(["generate", "--model", MODEL, "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64",
             "--out", OUT + "/cli.png", "--data-dir", DATA])
from engine.models.imports import pending_packages
report = {"code": code, "pending_after_generate": pending_packages(),
          "pipelines_imported": "diffusers.pipelines" in sys.modules}
"""
    + SAMPLES
    + r"""
from engine.models import load_bundle
bundle = load_bundle(MODEL)
found = latents(bundle, ["cfg"])
report["pending_after_load"] = pending_packages()
# A single file goes through the family's pipeline (diffusers.pipelines), still without the gathering inits.
found["single"] = latents(load_bundle(SINGLE, config=MODEL), ["cfg"])["cfg"]
report["pending_after_single_file"] = pending_packages()

# The public names are the classes loaded, and reading them runs no deferred __init__.
import diffusers, transformers
report["same_unet"] = type(bundle.unet) is diffusers.UNet2DConditionModel
report["same_clip"] = [type(bundle.text_encoder) is transformers.CLIPTextModel,
                       type(bundle.text_encoder_2) is transformers.CLIPTextModelWithProjection,
                       type(bundle.tokenizer) is transformers.CLIPTokenizer]
report["pending_after_public_names"] = pending_packages()

# A perturbed pass needs diffusers.hooks itself: its __init__ runs then, and the pass works.
found.update(latents(bundle, ["pag"]))
report["pending_after_pag"] = pending_packages()
# A LoRA (diffusers' LoRA loaders and peft) with the packages deferred.
from engine.request import LoraSpec
found["lora"] = latents(bundle, ["cfg"], [LoraSpec(LORA, 0.7)])["cfg"]

# Asking each deferred package for one of its names runs its __init__; the classes stay the same objects.
from diffusers.models.transformers import Transformer2DModel
from diffusers.models.unets import UNet2DConditionModel, UNet2DModel
import scipy.stats
scipy.stats.beta
import transformers.models
transformers.models.t5  # a model folder nothing here imported
block = next(m for m in bundle.unet.modules() if type(m).__name__ == "Transformer2DModel")
report["same_after_init"] = [type(block) is Transformer2DModel, UNet2DConditionModel is type(bundle.unet),
                             UNet2DModel.__module__ == "diffusers.models.unets.unet_2d"]
report["pending_at_end"] = pending_packages()
from diffusers import StableDiffusionXLPipeline  # the rest of diffusers still imports
report["pipeline_class"] = StableDiffusionXLPipeline.__name__
again = latents(bundle, ["cfg"])["cfg"]
report["cfg_unchanged_by_inits"] = bool((again == found["cfg"]).all())

from safetensors.torch import save_file
save_file(found, OUT + "/fresh.safetensors")
print("REPORT " + json.dumps(report))
"""
)

# A layout change seen by the deferred import: the first import of a module the UNet needs fails while
# packages are deferred (as if it had moved or needed a deferred package's name); the plain import must follow.
FALLBACK = (
    r"""
import importlib.abc, json, sys
MODEL, OUT = sys.argv[1], sys.argv[2]
from engine.models.imports import pending_packages

class FailOnce(importlib.abc.MetaPathFinder):
    failed = 0
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers.loaders.single_file_model" and not self.failed and pending_packages():
            type(self).failed += 1
            raise ImportError("simulated layout change")
        return None

sys.meta_path.insert(0, FailOnce())
"""
    + SAMPLES
    + r"""
from engine.models import load_bundle
bundle = load_bundle(MODEL)
found = latents(bundle, ["cfg"])
import diffusers
report = {"failed": FailOnce.failed, "pending": pending_packages(),
          "same_unet": type(bundle.unet) is diffusers.UNet2DConditionModel}
from safetensors.torch import save_file
save_file(found, OUT + "/fallback.safetensors")
print("REPORT " + json.dumps(report))
"""
)


def run_child(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def report_of(child: subprocess.Popen) -> dict:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-4000:]
    line = next(line for line in out.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT "))


@pytest.fixture(scope="module")
def fresh(tiny_sdxl_dir, tmp_path_factory):
    """The report of a fresh interpreter that ran `generate` and the samples, and the folder of its latents."""
    from engine.models.tiny import write_single_file

    out = tmp_path_factory.mktemp("startup")
    (out / "data").mkdir()
    single = write_single_file(tiny_sdxl_dir, out / "tiny.safetensors")
    lora = write_lora(tiny_sdxl_dir, out / "lora.safetensors")
    child = run_child(FRESH_GENERATE, str(tiny_sdxl_dir), str(out / "data"), str(out), str(single), str(lora))
    return report_of(child), out


def write_lora(model: Path, path: Path) -> Path:
    """A kohya-layout LoRA of rank 2 on the UNet's attention projections (random, seeded)."""
    from safetensors.torch import save_file

    from engine.models import load_bundle

    g = torch.Generator().manual_seed(3)
    state = {}
    for name, module in load_bundle(str(model)).unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_k")):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(2, module.in_features, generator=g) * 0.15
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 2, generator=g) * 0.15
            state[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(state, str(path))
    return path


def plain_latents(tiny_sdxl_dir: Path, guidances: list[str]) -> dict[str, torch.Tensor]:
    """The same samples in this interpreter, where diffusers and transformers were imported plainly."""
    namespace: dict = {"MODEL": str(tiny_sdxl_dir)}
    exec(SAMPLES, namespace)
    from engine.models import load_bundle

    return namespace["latents"](load_bundle(str(tiny_sdxl_dir)), guidances)


def test_a_fresh_generate_leaves_the_gathering_inits_unrun(fresh):
    fresh, _ = fresh
    assert fresh["code"] == 0
    # A start-up regression, not a wrong result: something now asks one of these packages for a name.
    assert fresh["pending_after_generate"] == sorted(DEFERRED)
    assert fresh["pending_after_load"] == sorted(DEFERRED)
    assert not fresh["pipelines_imported"]
    assert fresh["pending_after_single_file"] == sorted(DEFERRED)


def test_the_loaded_classes_are_the_libraries_public_ones(fresh):
    fresh, _ = fresh
    assert fresh["same_unet"] and all(fresh["same_clip"])
    assert fresh["pending_after_public_names"] == sorted(DEFERRED)
    assert "diffusers.hooks" not in fresh["pending_after_pag"]  # pag needed it: its __init__ ran, pag worked
    assert all(fresh["same_after_init"])
    assert fresh["pending_at_end"] == []
    assert fresh["pipeline_class"] == "StableDiffusionXLPipeline"
    assert fresh["cfg_unchanged_by_inits"]


def test_deferred_and_plain_imports_sample_bit_identically(fresh, tiny_sdxl_dir):
    from safetensors.torch import load_file

    _, out = fresh
    fresh = load_file(out / "fresh.safetensors")
    plain = plain_latents(tiny_sdxl_dir, ["cfg", "pag"])
    assert set(fresh) == {"cfg", "pag", "single", "lora"}
    for guidance in ("cfg", "pag"):
        assert torch.equal(fresh[guidance], plain[guidance]), guidance
    namespace: dict = {"MODEL": str(tiny_sdxl_dir)}
    exec(SAMPLES, namespace)
    from engine.models import load_bundle
    from engine.request import LoraSpec

    lora = namespace["latents"](
        load_bundle(str(tiny_sdxl_dir)), ["cfg"], [LoraSpec(str(out / "lora.safetensors"), 0.7)]
    )
    assert torch.equal(fresh["lora"], lora["cfg"])
    assert not torch.equal(fresh["lora"], fresh["cfg"])
    single = load_bundle(str(out / "tiny.safetensors"), config=str(tiny_sdxl_dir))
    assert torch.equal(fresh["single"], namespace["latents"](single, ["cfg"])["cfg"])
    assert not torch.equal(fresh["cfg"], fresh["pag"])  # two different runs, not one compared twice


@pytest.mark.slow  # ~10 s of CPU: the fallback initialises every deferred package (the fast tests below
# hold the mechanism on packages written for them)
def test_a_failing_deferred_import_falls_back_to_the_plain_one(tiny_sdxl_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path
    fallback = report_of(run_child(FALLBACK, str(tiny_sdxl_dir), str(out)))
    assert fallback["failed"] == 1  # the simulated layout change was hit
    assert fallback["pending"] == []  # the fallback initialised every package it had deferred
    assert fallback["same_unet"]
    assert torch.equal(load_file(out / "fallback.safetensors")["cfg"], plain_latents(tiny_sdxl_dir, ["cfg"])["cfg"])


# ---- the mechanism, on packages written here ------------------------------------------------------------


def write_package(root: Path, name: str, files: dict[str, str]) -> None:
    folder = root / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(textwrap.dedent(text))


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """A folder on sys.path for test packages; their modules leave sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("tnrfake"):
            del sys.modules[name]


def test_a_deferred_package_runs_its_init_on_the_first_name_it_lacks(packages):
    write_package(
        packages,
        "tnrfake_a",
        {
            "__init__.py": "import sys\nsys.tnrfake_a_inits = getattr(sys, 'tnrfake_a_inits', 0) + 1\n"
            "from .core import Core\nfrom .heavy import Heavy\nGATHERED = 'yes'\n",
            "core.py": "class Core:\n    pass\n",
            "heavy.py": "class Heavy:\n    pass\n",
        },
    )
    core = imports.import_deferring(lambda: __import__("tnrfake_a.core", fromlist=["Core"]), ["tnrfake_a"])
    package = sys.modules["tnrfake_a"]
    assert imports.is_deferred(package) and "tnrfake_a.heavy" not in sys.modules
    assert package.core is core  # submodules are set on it as usual
    assert not hasattr(sys, "tnrfake_a_inits")
    from tnrfake_a import GATHERED, Heavy  # a name it lacks: its own __init__ runs, once

    assert GATHERED == "yes" and sys.tnrfake_a_inits == 1
    assert package.Core is core.Core and Heavy.__module__ == "tnrfake_a.heavy"
    assert sys.modules["tnrfake_a"] is package and not imports.is_deferred(package)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = package.missing
    assert sys.tnrfake_a_inits == 1
    del sys.tnrfake_a_inits


def test_a_deferral_that_breaks_the_import_order_falls_back_to_the_plain_import(packages):
    # extra.py needs a name the package's __init__ defines before importing extra: deferred, asking for it
    # runs the __init__ in the middle of extra's own import, which fails; the plain import then works.
    write_package(
        packages,
        "tnrfake_b",
        {
            "__init__.py": "import sys\nsys.tnrfake_b_inits = getattr(sys, 'tnrfake_b_inits', 0) + 1\n"
            "from .core import Base\nfrom .extra import Extra\n",
            "core.py": "class Base:\n    pass\n",
            "extra.py": "from tnrfake_b import Base\n\nclass Extra(Base):\n    pass\n",
        },
    )
    extra = imports.import_deferring(lambda: __import__("tnrfake_b.extra", fromlist=["Extra"]), ["tnrfake_b"])
    package = sys.modules["tnrfake_b"]
    assert not imports.is_deferred(package)
    assert package.Extra is extra.Extra and issubclass(extra.Extra, package.Base)
    assert sys.tnrfake_b_inits == 2  # the deferred __init__ failed, the plain one ran
    assert "tnrfake_b" not in imports.pending_packages()
    del sys.tnrfake_b_inits


def test_what_cannot_be_deferred_imports_as_usual(packages):
    write_package(packages, "tnrfake_c", {"__init__.py": "VALUE = 1\n", "plain.py": "VALUE = 2\n"})
    assert imports.defer(["tnrfake_missing"]) == []  # not installed (a package that went away)
    assert "tnrfake_missing" not in sys.modules
    assert imports.defer(["tnrfake_c"]) == ["tnrfake_c"]
    assert imports.defer(["tnrfake_c"]) == []  # there already
    assert imports.defer(["tnrfake_c.plain"]) == []  # a module, not a package (it became one file)
    assert imports.is_deferred(sys.modules["tnrfake_c"])  # looking its submodule up ran no __init__
    assert __import__("tnrfake_c").VALUE == 1
    assert __import__("tnrfake_c.plain", fromlist=["VALUE"]).VALUE == 2


def test_an_error_in_load_itself_is_raised_after_the_fallback(packages):
    write_package(packages, "tnrfake_d", {"__init__.py": "VALUE = 1\n"})
    calls = []

    def load():
        calls.append(imports.pending_packages())
        raise ModuleNotFoundError("No module named 'somewhere.else'")

    with pytest.raises(ModuleNotFoundError, match="somewhere.else"):
        imports.import_deferring(load, ["tnrfake_d"])
    assert calls == [["tnrfake_d"], []]  # tried deferred, then plain (the package initialised), then raised
    assert sys.modules["tnrfake_d"].VALUE == 1


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("startup_bench", REPO / "bench" / "startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_reads_the_top_level_imports_of_an_importtime_log(tmp_path):
    log = tmp_path / "imports.txt"
    log.write_text(
        "import time: self [us] | cumulative | imported package\n"
        "import time:         5 |          5 |   child\n"
        "import time:        10 |    2000000 | parent\n"
        "import time:         7 |     500000 | other\n"
    )
    assert load_bench().top_imports(log) == [(2.0, "parent"), (0.5, "other")]


@pytest.mark.slow
def test_the_bench_script_times_both_sides(tiny_sdxl_dir, capsys):
    import re

    assert load_bench().main(["--model", str(tiny_sdxl_dir), "--repeats", "1", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    for label in ("wall", r"user\+sys"):
        ratio = float(re.search(rf"ratio tnr-lab/diffusers, {label} *: (\d+\.\d+) \(medians\)", out).group(1))
        assert 0 < ratio < 10


def test_a_deferred_package_serves_its_listed_names_from_their_submodule(packages, monkeypatch):
    write_package(
        packages,
        "tnrfake_s",
        {
            "__init__.py": "import sys\nsys.tnrfake_s_inits = getattr(sys, 'tnrfake_s_inits', 0) + 1\n"
            "from ._small import solve\nfrom .big import Other\n",
            "_small.py": "def solve():\n    return 42\n",
            "big.py": "class Other:\n    pass\n",
        },
    )
    monkeypatch.setitem(imports.SERVED, "tnrfake_s", {"solve": "tnrfake_s._small", "gone": "tnrfake_s._small"})
    solve = imports.import_deferring(lambda: __import__("tnrfake_s", fromlist=["solve"]).solve, ["tnrfake_s"])
    package = sys.modules["tnrfake_s"]
    assert solve() == 42 and imports.is_deferred(package)  # served: the __init__ has not run
    assert not hasattr(sys, "tnrfake_s_inits") and "tnrfake_s.big" not in sys.modules
    from tnrfake_s import Other  # any other name runs the __init__, which imports the same `solve`

    assert sys.tnrfake_s_inits == 1 and Other.__module__ == "tnrfake_s.big"
    assert package.solve is solve and not imports.is_deferred(package)
    with pytest.raises(AttributeError):  # a listed name its submodule lacks: the __init__ decides (it has none)
        _ = package.gone
    del sys.tnrfake_s_inits


def test_served_names_are_the_packages_own_objects():
    """What SERVED hands out is what each package's __init__ exports under that name (this interpreter imported
    them plainly); a library that moved a name fails here, not in a user's run."""
    import importlib

    for package, names in imports.SERVED.items():
        for name, submodule in names.items():
            assert getattr(importlib.import_module(submodule), name) is getattr(importlib.import_module(package), name)
