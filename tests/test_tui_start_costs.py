"""Two costs cut from the lab's start (issue 15), held to what they promise.

- LabStylesheet parses each CSS source once before the first frame (Textual's parsed each three times), and
  its rules are the ones Textual's own stylesheet gives, before and after a theme change.
- `tnr-lab` holds Python's cyclic garbage collector off until the lab's first frame, and never leaves it off:
  not after the lab, not after a failed start, not for a caller who had turned it off itself.
"""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import pytest
import textual.css.stylesheet as textual_stylesheet
from pilot_wait import settle
from textual.color import Color
from textual.css.stylesheet import Stylesheet, StylesheetParseError

from engine import collector
from tnr_tui import cli
from tnr_tui.cli.errors import UserError
from tnr_tui.ui.app import TnrLabApp
from tnr_tui.ui.stylesheet import LabStylesheet


@pytest.fixture
def collector_state():
    """Leave the interpreter's collector as the test found it (conftest unfreezes what the test froze)."""
    was_enabled = gc.isenabled()
    yield
    collector.release()
    (gc.enable if was_enabled else gc.disable)()


def rules_of(sheet: Stylesheet) -> list[tuple]:
    """Each rule set's selectors, origin and declared values, as text: Textual's `css` fails on some of its own
    rules, and a layout value is an object without equality."""
    return [
        (r.selectors, r.is_default_rules, r.tie_breaker, {k: repr(v) for k, v in r.styles.get_rules().items()})
        for r in sheet.rules
    ]


def textual_rules(app: TnrLabApp) -> list[tuple]:
    """The app's sources as Textual's own Stylesheet parses them, with the app's variables now."""
    plain = Stylesheet(variables=app.get_css_variables())
    plain.source = dict(app.stylesheet.source)
    plain.parse()
    return rules_of(plain)


async def started(app: TnrLabApp, pilot) -> None:
    await settle(pilot, lambda: app.first_frame_at is not None, "the first frame")


# ---- the stylesheet ---------------------------------------------------------------------------------------


async def test_the_lab_parses_each_css_source_once_before_its_first_frame(tmp_data_dir: Path, monkeypatch) -> None:
    parses: Counter = Counter()
    original = textual_stylesheet.parse

    def counting(scope, css, read_from, **kwargs):
        parses[(read_from, scope, kwargs.get("is_default_rules"), kwargs.get("tie_breaker"))] += 1
        return original(scope, css, read_from, **kwargs)

    monkeypatch.setattr(textual_stylesheet, "parse", counting)
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    assert isinstance(app.stylesheet, LabStylesheet)
    async with app.run_test(size=(150, 46)) as pilot:
        await started(app, pilot)
        before_first_frame = dict(parses)
    app_css = [key for key in before_first_frame if str(key[0][0]).endswith("app.tcss")]
    assert app_css, "app.tcss was never parsed"
    again = {key: n for key, n in before_first_frame.items() if n > 1}
    assert not again, f"parsed more than once: {again}"


async def test_its_rules_are_textuals_before_and_after_a_theme_change(tmp_data_dir: Path) -> None:
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        await started(app, pilot)
        dark = rules_of(app.stylesheet)
        assert len(dark) > 100 and dark == textual_rules(app)
        background = app.screen.query_one("#prompt").styles.background
        app.theme = "textual-light"
        await settle(pilot, lambda: rules_of(app.stylesheet) != dark, "the light theme's rules")
        assert rules_of(app.stylesheet) == textual_rules(app)
        await settle(
            pilot, lambda: app.screen.query_one("#prompt").styles.background != background, "the prompt restyled"
        )


def test_the_same_variables_keep_the_parse_cache_and_new_ones_empty_it() -> None:
    sheet = LabStylesheet(variables={"accent": "red"})
    sheet.add_source("Label { color: $accent; }", read_from=("test", "one"))
    sheet.parse()
    red = rules_of(sheet)
    assert red[0][3]["color"] == repr(Color.parse("red"))
    sheet.set_variables({"accent": "red"})
    assert len(sheet._parse_cache) == 1  # kept: the same variables
    sheet.set_variables({"accent": "blue"})
    sheet.reparse()
    assert rules_of(sheet)[0][3]["color"] == repr(Color.parse("blue"))


def test_invalid_css_still_raises_on_every_parse() -> None:
    sheet = LabStylesheet(variables={})
    sheet.add_source("Label { color: not-a-colour; }", read_from=("test", "bad"))
    with pytest.raises(StylesheetParseError):
        sheet.parse()
    with pytest.raises(StylesheetParseError):
        sheet.reparse()  # as Textual's: the failed source is parsed again, not skipped


# ---- the collector ----------------------------------------------------------------------------------------


def test_hold_turns_the_collector_off_and_release_turns_it_back_on(collector_state) -> None:
    gc.enable()
    collector.hold()
    assert not gc.isenabled() and collector.is_held()
    frozen = gc.get_freeze_count()
    assert collector.release(freeze=True)
    assert gc.isenabled() and not collector.is_held()
    assert gc.get_freeze_count() > frozen
    assert not collector.release()  # once only


def test_a_collector_the_caller_turned_off_stays_off(collector_state) -> None:
    gc.disable()
    collector.hold()
    assert not gc.isenabled() and not collector.is_held()
    assert not collector.release(freeze=True)
    assert not gc.isenabled()


def test_the_lab_command_holds_the_collector_until_it_returns_and_a_failed_start_too(
    tmp_data_dir: Path, monkeypatch, collector_state
) -> None:
    gc.enable()
    seen = []

    def run_app(args):
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr("tnr_tui.cli.lab.run_app", run_app)
    assert cli.main(["--data-dir", str(tmp_data_dir)]) == 0
    assert seen == [False] and gc.isenabled()

    def failing(args):
        raise UserError("no such thing")

    monkeypatch.setattr("tnr_tui.cli.lab.run_app", failing)
    assert cli.main(["--data-dir", str(tmp_data_dir)]) == 2
    assert gc.isenabled()


def test_commands_leave_the_collector_alone(tmp_data_dir: Path, monkeypatch, collector_state) -> None:
    gc.enable()
    seen = []
    monkeypatch.setattr("tnr_tui.cli.units.run", lambda args: seen.append((gc.isenabled(), collector.is_held())) or 0)
    assert cli.main(["units"]) == 0
    assert seen == [(True, False)]


async def test_the_app_turns_a_held_collector_back_on_at_its_first_frame(tmp_data_dir: Path, collector_state) -> None:
    gc.enable()
    collector.hold()
    app = TnrLabApp(data_dir=tmp_data_dir, image_protocol="halfcell", autoload=False)
    async with app.run_test(size=(150, 46)) as pilot:
        assert not gc.isenabled()
        await started(app, pilot)
        assert gc.isenabled() and not collector.is_held()
        assert gc.get_freeze_count() > 0  # the start-up's objects, out of later collections' way


def test_load_bundle_holds_the_collector_while_it_works_and_turns_it_back_on(monkeypatch, collector_state) -> None:
    import engine.models.loading as loading

    gc.enable()
    seen = []

    def building(ref, device, dtype, config):
        seen.append(gc.isenabled())
        raise loading.ModelError("no such model")

    monkeypatch.setattr(loading, "_load_bundle", building)
    with pytest.raises(loading.ModelError):
        loading.load_bundle("/nowhere")
    assert seen == [False] and gc.isenabled() and not collector.is_held()
    assert gc.get_freeze_count() == 0  # not frozen: a sweep, a study or the lab's worker goes on for long


def test_generate_holds_the_collector_from_its_start_to_the_end_of_the_models_load(
    tmp_data_dir: Path, tiny_sdxl_dir: Path, monkeypatch, collector_state, capsys
) -> None:
    import engine.models as models

    gc.enable()
    before, after = [], []
    real_load = models.load_bundle

    def load(*args, **kwargs):
        before.append(gc.isenabled())  # before load_bundle's own hold: the command's
        bundle = real_load(*args, **kwargs)
        after.append((gc.isenabled(), gc.get_freeze_count() > 0))
        return bundle

    monkeypatch.setattr(models, "load_bundle", load)
    out = tmp_data_dir / "one.png"
    argv = ["--data-dir", str(tmp_data_dir), "generate", "--model", str(tiny_sdxl_dir), "--prompt", "a cat"]
    assert cli.main([*argv, "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)]) == 0
    assert out.is_file()
    # Off from the command's start; on again for the sampling, what exists then frozen (the process ends soon).
    assert before == [False] and after == [(True, True)]
    assert gc.isenabled() and not collector.is_held()
