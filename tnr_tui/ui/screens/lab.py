"""The Lab screen: panels that edit one GenerationRequest, and the preview of the run in progress."""

from __future__ import annotations

import random
from typing import Any

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Input, Static

from engine.guidance.base import equivalent_cfg_scale
from engine.request import (
    EMBEDDED_MODEL,
    MAX_SEED,
    GenerationRequest,
    RequestError,
    WeightedPrompt,
    parse_field,
)
from engine.units import GUIDANCE, SCHEDULES, SOLVERS
from tnr_tui.services.text import visible
from tnr_tui.ui.screens import preset_breakpoints
from tnr_tui.ui.widgets.choice import Choice
from tnr_tui.ui.widgets.dropdown import DropDown
from tnr_tui.ui.widgets.fields import LabelledRow, RequestField, TextInput
from tnr_tui.ui.widgets.footer import Footer
from tnr_tui.ui.widgets.header import Header
from tnr_tui.ui.widgets.line import Line
from tnr_tui.ui.widgets.picture import Picture
from tnr_tui.ui.widgets.plot import LinePlot
from tnr_tui.ui.widgets.progress import Progress
from tnr_tui.ui.widgets.small_button import SmallButton
from tnr_tui.ui.widgets.telemetry import CHOICES as PLOT_CHOICES
from tnr_tui.ui.widgets.telemetry import DEFAULT_CHOICE, choice, has_values, series_of
from tnr_tui.ui.widgets.unit_params import UnitParams

METRIC_NAMES = ("colourfulness", "contrast", "saturation", "dynamic_range")
EXAMPLE_PROMPT = "a red circle on a blue background"  # the Lab's and Compare's first prompt: one the model knows
PLOT_IDLE = "the run's telemetry plots here as it samples"


def choice_row(label: str, registry: Any, value: str, select_id: str) -> Horizontal:
    """A labelled drop-down of one registry's units (solver, schedule, guidance method), in menu order."""
    options = [(name, name) for name in registry.names()]
    return LabelledRow(label, DropDown(options, value, id=select_id), classes="row")


def format_progress(index: int, steps: int, sigma: float, tnr_factor: float | None, elapsed: float) -> str:
    done = index + 1
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (steps - done) / rate if rate > 0 else 0.0
    parts = [f"step {done}/{steps}", f"σ {sigma:.3f}"]
    if tnr_factor is not None:
        parts.append(f"S {tnr_factor:.3f}")
    parts += [f"{rate:.2f} it/s", f"ETA {eta:.1f} s"]
    return "  ".join(parts)


def format_result(status: str, stats: dict[str, Any], metrics: dict[str, float], error: str = "") -> str:
    if status == "failed":
        return f"failed: {error}"
    head = "cancelled" if status == "cancelled" else "done"
    parts = [head]
    if "seconds" in stats:
        parts.append(f"{float(stats['seconds']):.2f} s")
    if "model_evaluations" in stats:
        parts.append(f"{int(stats['model_evaluations'])} model evaluations")
    line = " · ".join(parts)
    shown = [f"{name.replace('_', ' ')} {metrics[name]:.3f}" for name in METRIC_NAMES if name in metrics]
    return line + ("\n" + " · ".join(shown) if shown else "")


class ExtraPrompt(Horizontal):
    """One more prompt of the N-prompt form, with its own scale."""

    DEFAULT_CSS = """
    ExtraPrompt { height: auto; }
    ExtraPrompt > .extra-text { width: 1fr; }
    ExtraPrompt > .extra-scale { width: 10; }
    ExtraPrompt > Button { min-width: 5; width: 5; }
    """

    def __init__(self, text: str = "", scale: float = 1.0) -> None:
        super().__init__(classes="extra-prompt")
        # Made here, not in compose: the Lab reads a new row's prompt (the equivalent-scale line) before the row
        # has composed (a query then finds nothing: the "+ prompt" button crashed the app).
        self._text_input = TextInput(text, placeholder="another prompt", classes="extra-text")
        self._scale_input = TextInput(str(scale), placeholder="scale", classes="extra-scale", type="number")

    def compose(self) -> ComposeResult:
        yield self._text_input
        yield self._scale_input
        yield Button("✕", classes="remove-extra", variant="error", compact=True)

    def prompt(self) -> WeightedPrompt:
        text = self._text_input.exact_value  # a loaded prompt stays exact
        raw = self._scale_input.value.strip()
        try:
            scale = float(raw)
        except ValueError:
            raise RequestError(f"prompt scale must be a number, got {raw!r}") from None
        return WeightedPrompt(text, scale)


class LabScreen(Screen):
    """Edit a request, run it, watch it denoise."""

    AUTO_FOCUS = "#prompt"
    BINDINGS = [
        Binding("ctrl+r", "run", "Run", id="lab.run"),
        Binding("escape", "cancel", "Cancel", id="lab.cancel"),
        # Not in the footer (it would push Compare off an 80-column one): the seed panel has a button.
        Binding("ctrl+n", "new_seed", "New seed", id="lab.new_seed", show=False),
        # Where the picture and the plot do not fit side by side (80x24), one shows at a time.
        Binding("ctrl+t", "toggle_plot", "Plot", id="lab.toggle_plot", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="lab")
        self.job_ids: set[int] = set()
        self.last_result: dict[str, Any] = {}
        self.model_default_scales: dict[str, float] = {}  # the loaded model's (a blank scale means these)
        self.plot_rows: tuple[dict[str, Any], ...] = ()  # the telemetry rows of the run shown (RunProgress.rows)
        self._resumed = False
        self.plot_steps = 0

    # ---- layout ----

    def compose(self) -> ComposeResult:
        # Short labels (10 columns) and two fields a line, so that the column fits 44 columns of an 80x24
        # terminal and the preview takes the rest; the column scrolls when a method shows more fields.
        app: Any = self.app
        preset_breakpoints(self)
        yield Header()
        with Horizontal(id="lab-body"):
            with VerticalScroll(id="controls"):
                with Vertical(id="panel-prompt", classes="panel") as panel:
                    panel.border_title = "Prompt"
                    # Real text, not a placeholder (a grey example ran as an empty prompt); selected on focus,
                    # so typing replaces it; cleared, the prompt is empty on purpose (unconditional).
                    yield RequestField("prompt", "Prompt", EXAMPLE_PROMPT, placeholder="(empty prompt)")
                    yield RequestField("negative_prompt", "Negative")
                    yield Checkbox("N prompts, each with a scale", False, id="weighted", compact=True)
                    # Filled when first shown (_weighted_box): hidden until the box is ticked, its 8 widgets
                    # were 8 more for the first frame to mount and style.
                    yield Vertical(id="weighted-box")
                with Vertical(id="panel-solver", classes="panel") as panel:
                    panel.border_title = "Solver"
                    with Horizontal(classes="pair"):
                        yield choice_row("Solver", SOLVERS, "euler", "solver")
                        yield choice_row("Schedule", SCHEDULES, "default", "schedule")
                    with Horizontal(classes="pair"):
                        yield RequestField("steps", "Steps", "20")
                        yield RequestField("decode_every", "Decode", "5")
                    with Horizontal(classes="pair"):
                        # None: the schedule's own exponent (7 Karras, 1 power), shown as the placeholder
                        yield RequestField("schedule_rho", "rho", "", placeholder="auto", blank_is_none=True)
                        yield Checkbox(
                            "discrete t",
                            False,
                            id="discrete-timesteps",
                            compact=True,
                            tooltip="hand the model the nearest trained timestep (ComfyUI, diffusers' multistep)",
                        )
                    yield UnitParams(id="solver-params")  # the chosen solver's own parameters
                with Vertical(id="panel-guidance", classes="panel") as panel:
                    panel.border_title = "Guidance"
                    with Horizontal(classes="pair"):
                        yield choice_row("Method", GUIDANCE, "cfg", "guidance")
                        yield RequestField("scale", "Scale", "", placeholder="5.0", blank_is_none=True)
                    with Horizontal(classes="pair"):
                        yield Checkbox(
                            "TNR",
                            False,
                            id="tnr",
                            compact=True,
                            tooltip="True Noise Removal on the method's guided prediction: n + S (guided - n)",
                        )
                        yield RequestField("tnr_power", "TNR p", "0.25")
                        yield RequestField("cfg_rescale", "Rescale", "", placeholder="0", blank_is_none=True)
                    with Horizontal(classes="pair", id="window"):
                        yield RequestField("guidance_sigma_min", "σ from", placeholder="none", blank_is_none=True)
                        yield RequestField("guidance_sigma_max", "σ to", placeholder="none", blank_is_none=True)
                    yield UnitParams(id="guidance-params")  # the chosen method's own parameters
                    yield Static("", id="equivalent", markup=False)
                with Vertical(id="panel-seed", classes="panel") as panel:
                    panel.border_title = "Seed & size"
                    with Horizontal(classes="pair"):
                        yield RequestField("seed", "Seed", "0")
                        yield SmallButton("new", id="new-seed", tooltip="a new random seed (ctrl+n)")
                        yield Checkbox("lock", True, id="seed-lock", compact=True, tooltip="keep the seed between runs")
                    with Horizontal(classes="pair"):
                        yield RequestField("width", "Width", placeholder="native", blank_is_none=True)
                        yield RequestField("height", "Height", placeholder="native", blank_is_none=True)
                with Vertical(id="panel-model", classes="panel") as panel:
                    panel.border_title = "Model"
                    with Horizontal(classes="pair"):
                        yield RequestField("model", "Model", app.model_ref)
                        yield SmallButton("load", id="load-model")
                    yield LabelledRow(
                        "LoRAs",
                        TextInput("", placeholder="none: PATH[:WEIGHT]; ...", id="loras", compact=True),
                        id="lora-row",
                        tooltip="LoRA files, PATH[:WEIGHT] separated by ';' (applied per run, no reload)",
                    )
                    yield Static("not loaded", id="model-state", markup=False)
            with Vertical(id="output"):
                with Vertical(id="panel-preview", classes="panel") as panel:
                    panel.border_title = "Preview"
                    # The numbers first: on a small terminal the picture is what gets cut.
                    yield Progress(total=1, id="progress")
                    yield Line("idle", id="progress-text", markup=False)
                    yield Line("", id="result-text", markup=False)
                    # The picture and, beside it, the live plot of the run's telemetry (on a small terminal
                    # one at a time: ctrl+t swaps them).
                    with Horizontal(id="preview-row"):
                        yield Picture("no image yet: type a prompt and press ctrl+r", id="preview", prerender=True)
                        with Vertical(id="live-plot-box"):
                            yield Choice([(c.label, c.key) for c in PLOT_CHOICES], DEFAULT_CHOICE, id="plot-series")
                            yield LinePlot(PLOT_IDLE, id="live-plot")
        yield Footer()

    def _compositor_refresh(self) -> None:
        """Textual's, except while the app batches its updates: then its display drops the frame this would
        render (the first layout, inside the start-up batch, rendered the whole Lab for nothing: 26 ms of
        the start, measured in pairs). What is dirty stays dirty, so the first frame after the batch paints
        it. A private hook of Textual's Screen: without it (another Textual), the frame is rendered as before."""
        if getattr(self.app, "_batch_count", 0):
            return
        super()._compositor_refresh()

    def on_mount(self) -> None:
        self._sync_solver()
        self._sync_guidance()
        self._sync_weighted()
        self._sync_schedule()

    # ---- showing only what applies ----

    def _field(self, dom_id: str) -> RequestField:
        return self.query_one(f"#{dom_id}", RequestField)

    def _method(self) -> Any:
        return GUIDANCE.get(str(self.query_one("#guidance", DropDown).value))

    def _sync_solver(self) -> None:
        self.query_one("#solver-params", UnitParams).show(SOLVERS.get(str(self.query_one("#solver", DropDown).value)))

    def _sync_guidance(self) -> None:
        """Show what the chosen method takes (its unit's declaration), and only that."""
        unit = self._method()
        weighted = self.query_one("#weighted", Checkbox).value
        tnr_box = self.query_one("#tnr", Checkbox)
        tnr_box.display = not unit.tnr  # tnr and tnr-cfg have it always
        self._field("scale").display = unit.uses_scale and not weighted
        self._field("tnr_power").display = unit.tnr or tnr_box.value
        self._field("cfg_rescale").display = unit.rescale
        self.query_one("#window").display = unit.name != "none"
        model_scale = self.model_default_scales.get(unit.name)
        self._field("scale").placeholder = (
            f"{unit.default_scale:g}" if model_scale is None else f"{model_scale:g} (model)"
        )
        self.query_one("#guidance-params", UnitParams).show(unit)
        self._update_equivalent()

    def _weighted_box(self) -> Vertical:
        """The N-prompt box, its fields mounted on first use (they exist in the DOM at once, composed later)."""
        box = self.query_one("#weighted-box", Vertical)
        if not box.children:
            pair = Horizontal(classes="pair")
            box.mount_all([pair, Vertical(id="extra-prompts"), Button("+ prompt", id="add-prompt", compact=True)])
            # Mounted into the pair, not given to its constructor: a constructor's children join the DOM only
            # when the pair composes, and the Lab reads these fields right away.
            pair.mount_all(
                [
                    RequestField("scale", "Scale", "5.0", id="prompt_scale"),
                    RequestField("scale", "Neg scale", "-4.0", id="negative_scale"),
                ]
            )
        return box

    def _sync_weighted(self) -> None:
        weighted = self.query_one("#weighted", Checkbox).value
        box = self._weighted_box() if weighted else self.query_one("#weighted-box")
        box.display = weighted
        self._sync_guidance()

    def _sync_schedule(self) -> None:
        unit = SCHEDULES.get(str(self.query_one("#schedule", DropDown).value))
        rho = self._field("schedule_rho")
        rho.display = any(p.name == "rho" for p in unit.params)
        default = getattr(unit, "default_rho", None)
        rho.placeholder = "auto" if default is None else f"{default:g}"

    def _update_equivalent(self) -> None:
        text = ""
        if self.query_one("#weighted", Checkbox).value:
            try:
                prompts = self._weighted_prompts()
            except RequestError:
                prompts = ()
            scales = [p.scale for p in prompts]
            g = equivalent_cfg_scale(scales)
            if g is not None:
                text = f"equivalent CFG scale g = {g:.2f}"
            elif scales:
                text = f"{len(scales)} prompts: base = mean + Σ s_i (p_i − mean); no single CFG scale"
        equivalent = self.query_one("#equivalent", Static)
        if text == str(equivalent.content) and equivalent.display == bool(text):
            return  # each field's change asks again: an unchanged line is no layout of the screen
        equivalent.update(text)
        equivalent.display = bool(text)  # an empty line costs a row of an 80x24 terminal

    @on(DropDown.Changed, "#guidance")
    def _guidance_changed(self) -> None:
        self._sync_guidance()

    @on(DropDown.Changed, "#solver")
    def _solver_changed(self) -> None:
        self._sync_solver()

    @on(Checkbox.Changed, "#tnr")
    def _tnr_changed(self) -> None:
        self._sync_guidance()

    @on(DropDown.Changed, "#schedule")
    def _schedule_changed(self) -> None:
        self._sync_schedule()

    @on(Checkbox.Changed, "#weighted")
    def _weighted_changed(self) -> None:
        self._sync_weighted()

    @on(Choice.Changed, "#plot-series")
    def _plot_series_changed(self) -> None:
        self._update_plot()

    @on(events.ScreenResume)
    def _first_resume(self, event: events.ScreenResume) -> None:
        # Textual restyles every widget when a screen resumes; on the first resume the mount has just styled
        # them all (0.15 s of CPU of the first frame, measured). Later resumes (back from History) still do.
        if not self._resumed:
            self._resumed = True
            event.refresh_styles = False

    @on(Input.Changed)
    def _any_input_changed(self) -> None:
        if self.is_mounted:
            self._update_equivalent()

    @on(Button.Pressed, "#add-prompt")
    def _add_prompt(self) -> None:
        self.query_one("#extra-prompts").mount(ExtraPrompt())
        self.call_after_refresh(self._update_equivalent)

    @on(Button.Pressed, ".remove-extra")
    def _remove_prompt(self, event: Button.Pressed) -> None:
        if event.button.parent is not None:
            event.button.parent.remove()
        self.call_after_refresh(self._update_equivalent)

    @on(SmallButton.Pressed, "#new-seed")
    def _new_seed_pressed(self) -> None:
        self.action_new_seed()

    @on(SmallButton.Pressed, "#load-model")
    def _load_pressed(self) -> None:
        self.action_load_model()

    # ---- the request ----

    def _weighted_prompts(self) -> tuple[WeightedPrompt, ...]:
        self._weighted_box()
        prompts = [
            WeightedPrompt(self._field("negative_prompt").exact_value, self._scale_of("negative_scale")),
            WeightedPrompt(self._field("prompt").exact_value, self._scale_of("prompt_scale")),
        ]
        prompts += [row.prompt() for row in self.query(ExtraPrompt)]
        return tuple(prompts)

    def _scale_of(self, dom_id: str) -> float:
        value = self._field(dom_id).parsed()
        if value is None:
            raise RequestError("prompt scale must be a number")
        return float(value)

    def _loras(self) -> tuple[tuple[str, float], ...]:
        from engine.loras import parse_lora_list  # torch-free

        text = self.query_one("#loras", TextInput).exact_value
        try:
            return tuple(parse_lora_list(text))
        except (ValueError, RequestError) as exc:
            raise RequestError(f"LoRAs: {exc}") from None

    def build_request(self) -> GenerationRequest:
        """The request the panels describe; raises RequestError naming the first bad field."""
        unit = self._method()
        method = unit.name
        weighted = self.query_one("#weighted", Checkbox).value
        tnr = not unit.tnr and self.query_one("#tnr", Checkbox).value
        values: dict[str, Any] = {
            "prompt": self._field("prompt").parsed(),
            "negative_prompt": self._field("negative_prompt").parsed(),
            "model": self._field("model").parsed(),
            "solver": str(self.query_one("#solver", DropDown).value),
            "schedule": str(self.query_one("#schedule", DropDown).value),
            "guidance": method,
        }
        for name in ("steps", "decode_every", "seed", "width", "height", "schedule_rho"):
            values[name] = self._field(name).parsed()
        values["discrete_timesteps"] = self.query_one("#discrete-timesteps", Checkbox).value
        values["solver_params"] = self.query_one("#solver-params", UnitParams).values()
        values["guidance_params"] = self.query_one("#guidance-params", UnitParams).values()
        values["tnr"] = tnr
        values["loras"] = self._loras()
        # The Lab's runs keep their trajectory frames (History: t scrubs them); the CLI's need --keep-frames.
        values["keep_frames"] = True
        if unit.uses_scale and not weighted:
            values["scale"] = self._field("scale").parsed()
        if unit.tnr or tnr:
            values["tnr_power"] = self._field("tnr_power").parsed()
        if unit.rescale:
            values["cfg_rescale"] = self._field("cfg_rescale").parsed()
        if method != "none":
            values["guidance_sigma_min"] = self._field("guidance_sigma_min").parsed()
            values["guidance_sigma_max"] = self._field("guidance_sigma_max").parsed()
        if weighted:
            values["prompts"] = self._weighted_prompts()
        return GenerationRequest(**values)

    def load_request(self, request: GenerationRequest) -> bool:
        """Fill the panels from a request (History's "load into the Lab"). True when a text has control
        characters: shown escaped, kept exact while unedited (widgets.fields.TextInput)."""

        def put(name: str, value: Any) -> None:
            self._field(name).show_exact("" if value is None else str(value))

        for name in ("prompt", "negative_prompt", "model", "steps", "decode_every", "seed", "width", "height"):
            put(name, getattr(request, name))
        put("schedule_rho", request.schedule_rho)
        put("scale", request.scale)
        put("tnr_power", request.tnr_power)
        put("cfg_rescale", request.cfg_rescale)
        put("guidance_sigma_min", request.guidance_sigma_min)
        put("guidance_sigma_max", request.guidance_sigma_max)
        self.query_one("#solver", DropDown).value = request.solver
        self.query_one("#schedule", DropDown).value = request.schedule
        self.query_one("#guidance", DropDown).value = request.guidance
        self.query_one("#tnr", Checkbox).value = request.tnr
        self.query_one("#discrete-timesteps", Checkbox).value = request.discrete_timesteps
        self.query_one("#solver-params", UnitParams).show(SOLVERS.get(request.solver), request.solver_params)
        self.query_one("#guidance-params", UnitParams).show(GUIDANCE.get(request.guidance), request.guidance_params)
        self.query_one("#loras", TextInput).show_exact(
            "; ".join(f"{lora.path}:{lora.weight:g}" for lora in request.loras)
        )
        self.query_one("#seed-lock", Checkbox).value = True
        extra_box = self._weighted_box().query_one("#extra-prompts")
        extra_box.remove_children()
        weighted = len(request.prompts) >= 2
        self.query_one("#weighted", Checkbox).value = weighted
        if weighted:
            neg, pos, *extras = request.prompts
            put("negative_prompt", neg.text)
            put("prompt", pos.text)
            self._field("negative_scale").value = str(neg.scale)
            self._field("prompt_scale").value = str(pos.scale)
            extra_box.mount_all([ExtraPrompt(p.text, p.scale) for p in extras])
        self._sync_weighted()
        self._sync_schedule()
        texts = [p.text for p in request.prompts] + [request.prompt, request.negative_prompt, request.model]
        return any(visible(text) != text for text in texts)

    # ---- actions ----

    def action_run(self) -> None:
        app: Any = self.app
        if not self.query_one("#seed-lock", Checkbox).value:
            self.action_new_seed()
        try:
            request = self.build_request()
        except RequestError as exc:
            self.notify(str(exc), title="Cannot run", severity="error", markup=False)
            return
        job_id = app.submit(request, owner="lab")
        if job_id is None:
            return
        self.job_ids.add(job_id)
        queue = app.queue_text()
        if queue:  # behind another run: say so, or ten fast ctrl+r look like one
            self.query_one("#progress-text", Line).set(f"queued: {queue}")
            self.notify(f"run queued: {queue} (escape cancels them all)", timeout=3, markup=False)
        else:
            self.query_one("#progress-text", Line).set("queued")

    def action_cancel(self) -> None:
        app: Any = self.app
        if app.cancel_runs():
            self.query_one("#progress-text", Line).set("cancelling…")

    def action_toggle_plot(self) -> None:
        """Show the plot instead of the picture, or back (where they do not fit side by side)."""
        self.toggle_class("-plot")
        self._title_preview()

    def on_resize(self) -> None:
        self._title_preview()

    def _title_preview(self) -> None:
        """The panel's title says how to reach what is hidden on a small terminal (app.tcss: 100x32 fits both)."""
        both = self.has_class("-wide") and self.has_class("-tall")
        panel = self.query_one("#panel-preview")
        if both:
            panel.border_title = "Preview"
        elif self.has_class("-plot"):
            panel.border_title = "Plot · ctrl+t picture"
        else:
            panel.border_title = "Preview · ctrl+t plot"

    def action_new_seed(self) -> None:
        self._field("seed").value = str(random.randint(0, min(MAX_SEED, 2**32 - 1)))

    def action_load_model(self) -> None:
        app: Any = self.app
        try:
            ref = parse_field("model", self._field("model").value)
        except RequestError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        app.load_model(ref or EMBEDDED_MODEL)

    # ---- worker messages, forwarded by the app ----

    def _with_queue(self, line: str) -> str:
        app: Any = self.app
        _, queued = app.worker.queue_counts()
        return f"{line}  · {queued} queued" if queued else line

    def show_model_state(
        self, ref: str, state: str, detail: str, default_scales: dict[str, float] | None = None
    ) -> None:
        if state == "loaded":
            self.model_default_scales = dict(default_scales or {})
            self._sync_guidance()  # a blank scale now means this model's default
        ref, detail = visible(ref), visible(detail)  # a model path typed or loaded from an import
        text = {"loading": f"{ref}: loading…", "loaded": f"{ref}: loaded ({detail})", "failed": f"{ref}: failed"}
        self.query_one("#model-state", Static).update(text.get(state, state))
        name = ref if len(ref) <= 40 else "…" + ref[-39:]
        self.sub_title = f"{name}: {state}"  # in the header, visible whatever the terminal's height
        self.query_one("#model-state").set_class(state == "failed", "-failed")

    def show_started(self, request: GenerationRequest) -> None:
        bar = self.query_one("#progress", Progress)
        bar.update(total=request.steps, progress=0)
        self.query_one("#progress-text", Line).set(self._with_queue(f"starting: {request.steps} steps"))
        # The last run's result stays, muted, until this one ends: clearing it and writing it back moved the
        # picture and the plot twice a run, each a layout of the whole screen (~18 ms of the UI thread).
        self.query_one("#result-text", Line).add_class("-previous")
        self.plot_rows, self.plot_steps = (), request.steps
        self._update_plot()

    def show_progress(self, message: Any) -> None:
        self.query_one("#progress", Progress).update(total=message.steps, progress=message.index + 1)
        # Every step: without a layout pass while the line fits (widgets/line.py).
        self.query_one("#progress-text", Line).set(
            self._with_queue(
                format_progress(message.index, message.steps, message.sigma, message.tnr_factor, message.elapsed)
            )
        )
        rows = getattr(message, "rows", ())
        if len(rows) != len(self.plot_rows) or message.steps != self.plot_steps:
            self.plot_rows, self.plot_steps = rows, message.steps
            self._update_plot()

    def _update_plot(self) -> None:
        """Draw the chosen series of the rows so far over the run's steps (the x axis does not move)."""
        chosen = choice(str(self.query_one("#plot-series", Choice).value))
        rows = self.plot_rows
        if not rows:
            empty = PLOT_IDLE if not self.plot_steps else "waiting for the first step…"
        elif not has_values(rows, chosen):
            empty = f"{chosen.label}: none in this run"
        else:
            empty = ""
        x_range = (1.0, float(self.plot_steps)) if self.plot_steps > 1 else None
        plot = self.query_one("#live-plot", LinePlot)
        series = series_of(rows, chosen, x="step")
        # One series: the drop-down above names it, and the legend's row is worth more as plot on 80x24.
        plot.plot(series, x_range=x_range, log_y=chosen.log_y, x_label="step", empty=empty, legend=len(series) > 1)

    def show_preview(self, message: Any) -> None:
        kind = "decoded" if message.decoded else "denoised estimate"
        self.query_one("#preview", Picture).show(
            message.image, f"{kind}, step {message.index + 1}", prepared=getattr(message, "prepared", None)
        )

    def show_ended(self, message: Any) -> None:
        self.last_result = {"status": message.status, "stats": message.stats, "metrics": message.metrics}
        text = format_result(message.status, message.stats, message.metrics, message.error)
        result = self.query_one("#result-text", Line)
        result.set(visible(text, keep_newlines=True))
        result.remove_class("-previous")
        for warning in message.stats.get("warnings", []):
            self.notify(warning, severity="warning", markup=False, timeout=10)
        self.query_one("#progress-text", Line).set(self._with_queue(message.status))
        if message.image is not None:
            seed = message.request.seed
            self.query_one("#preview", Picture).show(message.image, f"final image, seed {seed}")
