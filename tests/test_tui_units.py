"""The Lab's panels come from the units' declarations: every unit in the drop-downs, each one's parameters as
fields that validate with the Param's own rules, and the request they build (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Checkbox, Input

from engine import units
from engine.request import GenerationRequest, RequestError
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.widgets.dropdown import DropDown
from tnr_tui.ui.widgets.unit_params import ParamField, UnitParams, short_label


def make_app(data_dir: Path) -> TnrLabApp:
    return TnrLabApp(data_dir=data_dir, image_protocol="halfcell", autoload=False)


def options(drop_down: DropDown) -> list[str]:
    return [str(value) for _, value in drop_down.options]


async def test_every_registered_unit_is_in_its_drop_down(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(120, 40)):
        lab = app.lab
        assert options(lab.query_one("#solver", DropDown)) == list(units.SOLVERS.names())
        assert options(lab.query_one("#guidance", DropDown)) == list(units.GUIDANCE.names())
        assert options(lab.query_one("#schedule", DropDown)) == list(units.SCHEDULES.names())


async def test_each_unit_shows_exactly_its_own_parameters(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(120, 60)) as pilot:
        lab = app.lab
        for registry, select, panel, field in (
            (units.GUIDANCE, "#guidance", "#guidance-params", "guidance"),
            (units.SOLVERS, "#solver", "#solver-params", "solver"),
        ):
            for unit in registry:
                lab.query_one(select, DropDown).value = unit.name
                await pilot.pause()
                shown = [f.param.name for f in lab.query_one(panel, UnitParams).query(ParamField)]
                assert shown == [p.name for p in unit.params], unit.name
                if registry is units.GUIDANCE:
                    assert lab.query_one("#scale").display == unit.uses_scale
                    assert lab.query_one("#cfg_rescale").display == unit.rescale
                # Built from untouched fields, the request is the unit's defaults: no parameter is set.
                request = lab.build_request()
                assert getattr(request, field) == unit.name and getattr(request, f"{field}_params") == {}
            lab.query_one(select, DropDown).value = "cfg" if registry is units.GUIDANCE else "euler"
            await pilot.pause()


async def test_apg_parameters_typed_in_the_panel_reach_the_request(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(120, 60)) as pilot:
        lab = app.lab
        lab.query_one("#guidance", DropDown).value = "apg"
        await pilot.pause()
        fields = {f.param.name: f for f in lab.query(ParamField)}
        fields["eta"].query_one(Input).value = "0"
        fields["adaptive_projected_guidance_rescale"].query_one(Input).value = "2.5"
        await pilot.pause()
        request = lab.build_request()
        assert request.guidance_params == {"eta": 0.0, "adaptive_projected_guidance_rescale": 2.5}
        # A bad value is the Param's own message, next to the field and from build_request.
        fields["adaptive_projected_guidance_rescale"].query_one(Input).value = "-1"
        await pilot.pause()
        message = str(fields["adaptive_projected_guidance_rescale"].query_one(".field-error").content)
        assert "adaptive_projected_guidance_rescale must be at least 0" in message
        with pytest.raises(RequestError, match="adaptive_projected_guidance_rescale must be at least 0"):
            lab.build_request()


async def test_a_stochastic_solver_shows_eta_and_s_noise_and_tnr_is_a_checkbox(tmp_data_dir: Path) -> None:
    stochastic = next(u for u in units.SOLVERS if u.stochastic and {"eta", "s_noise"} <= {p.name for p in u.params})
    app = make_app(tmp_data_dir)
    async with app.run_test(size=(120, 60)) as pilot:
        lab = app.lab
        lab.query_one("#solver", DropDown).value = stochastic.name
        await pilot.pause()
        fields = {f.param.name: f for f in lab.query_one("#solver-params", UnitParams).query(ParamField)}
        assert {"eta", "s_noise"} <= set(fields)
        fields["eta"].query_one(Input).value = "0.5"
        assert lab.query_one("#tnr_power").display is False  # cfg without TNR
        lab.query_one("#tnr", Checkbox).value = True
        await pilot.pause()
        assert lab.query_one("#tnr_power").display is True
        request = lab.build_request()
        assert request.solver == stochastic.name and request.solver_params == {"eta": 0.5} and request.tnr


async def test_loading_a_request_fills_the_units_fields(tmp_data_dir: Path) -> None:
    app = make_app(tmp_data_dir)
    loaded = GenerationRequest(
        prompt="a green square", guidance="apg", scale=4.0, guidance_params={"eta": 0.25}, solver="dpmpp_2m", tnr=True
    )
    async with app.run_test(size=(120, 60)) as pilot:
        lab = app.lab
        lab.load_request(loaded)
        await pilot.pause()
        again = lab.build_request()
        assert (again.guidance, again.guidance_params, again.solver, again.tnr) == (
            "apg",
            {"eta": 0.25},
            "dpmpp_2m",
            True,
        )


def test_labels_fit_the_column_and_keep_the_telling_words() -> None:
    assert short_label("eta") == "eta"
    assert short_label("adaptive_projected_guidance_momentum") == "momentum"
    assert short_label("perturbed_guidance_scale") == "scale"
    assert all(len(short_label(p.name)) <= 10 for r in (units.SOLVERS, units.GUIDANCE) for u in r for p in u.params)


async def test_the_model_panel_takes_loras_as_text(tmp_data_dir: Path) -> None:
    from tnr_tui.ui.widgets.fields import TextInput

    app = make_app(tmp_data_dir)
    async with app.run_test(size=(120, 60)) as pilot:
        lab = app.lab
        lab.query_one("#loras", TextInput).value = "styles/ink.safetensors:0.6; detail.safetensors"
        await pilot.pause()
        request = lab.build_request()
        assert [(lora.path, lora.weight) for lora in request.loras] == [
            ("styles/ink.safetensors", 0.6),
            ("detail.safetensors", 1.0),
        ]
        lab.load_request(request)
        await pilot.pause()
        assert lab.build_request().loras == request.loras
        lab.query_one("#loras", TextInput).value = "ink.safetensors:1e400"
        with pytest.raises(RequestError, match="LoRA weight must be a finite number"):
            lab.build_request()
