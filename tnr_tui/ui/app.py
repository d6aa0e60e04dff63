"""The Textual lab (`tnr-lab` with no command). No torch at import time: the worker loads it after first paint.

The App owns the device worker and routes its messages to the screens; screens never talk to the worker
thread directly and the worker never touches widgets.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from engine import collector
from engine.request import EMBEDDED_MODEL, GenerationRequest
from tnr_tui.services.text import visible
from tnr_tui.ui.screens.lab import LabScreen
from tnr_tui.ui.stylesheet import LabStylesheet
from tnr_tui.ui.widgets.picture import import_image_library, load_image_class, prepare_images
from tnr_tui.ui.worker import DeviceWorker, ModelState, RunEnded, RunPreview, RunProgress, RunStarted

if TYPE_CHECKING:
    from tnr_tui.ui.screens.compare import CompareScreen
    from tnr_tui.ui.screens.history import HistoryScreen

KEYMAP_FILE = "keymap.json"  # {"binding id": "keys"}, e.g. {"lab.run": "ctrl+g"}, in the data directory


class HistoryUnavailable(Exception):
    """The history could not be opened; the message says why."""


class DeferredImported(Message):
    """From the import thread: the libraries the first frame did without are imported."""


def binding_keys() -> dict[str, str]:
    """Each id a keymap may name, with the key(s) its Binding declares (comma-separated): every Binding with an
    id on the lab's widget, screen and app classes (its screens imported first: the History's and Compare's are
    otherwise built only when first shown)."""
    from textual.dom import DOMNode

    import tnr_tui.ui.screens.compare
    import tnr_tui.ui.screens.dialogs
    import tnr_tui.ui.screens.history
    import tnr_tui.ui.screens.pair
    import tnr_tui.ui.screens.trajectory  # noqa: F401

    keys: dict[str, str] = {}
    pending = list(DOMNode.__subclasses__())
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        keys.update((b.id, b.key) for b in cls.__dict__.get("BINDINGS", ()) if isinstance(b, Binding) and b.id)
    return keys


def binding_ids() -> set[str]:
    """The ids a keymap may name (binding_keys)."""
    return set(binding_keys())


def keymap_clashes(keymap: dict[str, str], defaults: dict[str, str]) -> list[str]:
    """Where a keymap gives a binding a key another binding already has, in a place where both are live: the
    same screen's (ids share their prefix: lab., history. ...) or the app's (app., live everywhere). Only the
    first of the two to match would ever run. One line per clash, naming the ids and the key."""

    def scope(binding_id: str) -> str:
        return binding_id.split(".", 1)[0]

    def keys(spec: str) -> set[str]:
        return {k.strip() for k in spec.split(",") if k.strip()}

    effective = {binding_id: keymap.get(binding_id, key) for binding_id, key in defaults.items()}
    clashes: list[str] = []
    for mine in sorted(keymap):
        if mine not in effective:
            continue
        for other, spec in sorted(effective.items()):
            if other == mine or not (scope(other) == scope(mine) or "app" in (scope(other), scope(mine))):
                continue
            if other in keymap and other < mine:
                continue  # said once, from the first of the two
            for key in sorted(keys(effective[mine]) & keys(spec)):
                clashes.append(f"{mine} and {other} both take {key}")
    return clashes


class TnrLabApp(App[int]):
    """The lab: Lab, History and Compare screens over one device worker."""

    TITLE = "tnr-lab"
    CSS_PATH = "app.tcss"
    DEFAULT_MODE = "lab"
    # Screen classes for the layout (app.tcss): 80x24, the usual SSH default, is narrow and short.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    # Keys that move the focus or the screen are priority bindings, run as the app reads each key: a screen's
    # own Tab binding runs only after the focused widget has had the key, and by then the keys that came with
    # it in one read (typing ahead, or any burst over SSH) were already routed to the old focus ("Tab Tab
    # Space" replaced the prompt with a space; "cat<Tab>30" typed 30 into the prompt). Found in tmux.
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
        Binding("f2", "switch_mode('lab')", "Lab", id="app.lab", priority=True),
        Binding("f3", "switch_mode('history')", "History", id="app.history", priority=True),
        Binding("f4", "switch_mode('compare')", "Compare", id="app.compare", priority=True),
        Binding("tab", "focus_next", "Focus next", show=False, priority=True),
        Binding("shift+tab", "focus_previous", "Focus previous", show=False, priority=True),
        Binding("f12", "screenshot", "Screenshot", id="app.screenshot", show=False),
    ]

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        model: str | None = None,
        image_protocol: str = "auto",
        load_fn: Callable[[str], Any] | None = None,
        run_fn: Callable[..., Any] | None = None,
        store_fn: Callable[[Path | None], Any] | None = None,
        autoload: bool = True,
        threads: int | None = None,
    ) -> None:
        self.image_protocol = prepare_images(image_protocol)  # before run(): it may query the terminal
        super().__init__()
        # Parses each CSS source once before the first frame, where Textual's parses each three times.
        self.stylesheet = LabStylesheet.taking_over(self.stylesheet, self.get_css_variables())
        # One instance of each screen for the app's life: the Lab keeps its panels while History is open.
        self.lab_screen = LabScreen()
        # History and Compare are made (their modules imported) when first shown or asked for: the first frame
        # does without them; the thread that imports after the first frame loads their modules meanwhile.
        self._history_screen: HistoryScreen | None = None
        self._compare_screen: CompareScreen | None = None
        self.add_mode("lab", lambda: self.lab_screen)
        self.add_mode("history", lambda: self.history_screen)
        self.add_mode("compare", lambda: self.compare_screen)
        self.data_dir = Path(data_dir) if data_dir else None
        self.model_ref = model or EMBEDDED_MODEL
        self.autoload = autoload
        self._store_fn = store_fn
        self._store: Any = None
        self._store_lock = threading.Lock()
        # One store per process (docs/history.md): the worker records runs through the app's own handle.
        self.worker = DeviceWorker(
            self.post_message,
            data_dir=self.data_dir,
            load_fn=load_fn,
            run_fn=run_fn,
            store_fn=lambda _data_dir: self.store,
            threads=threads,
        )
        self.job_owner: dict[int, str] = {}
        self.first_frame_at: float | None = None
        self.worker_stuck = False  # quit while the worker was inside a model evaluation (see _stop_worker)
        self.deferred_ready = False  # the keymap is applied and the pictures have their image widgets
        self.ended: list[RunEnded] = []  # every outcome, in order (tests and the compare screen read it)

    @property
    def history_screen(self) -> HistoryScreen:
        if self._history_screen is None:
            from tnr_tui.ui.screens.history import HistoryScreen

            self._history_screen = HistoryScreen()
        return self._history_screen

    @property
    def compare_screen(self) -> CompareScreen:
        if self._compare_screen is None:
            from tnr_tui.ui.screens.compare import CompareScreen

            self._compare_screen = CompareScreen()
        return self._compare_screen

    # ---- lifecycle ----

    def on_mount(self) -> None:
        self.worker.start()
        # Nothing that can wait runs before the first frame: the model, textual-image (0.1-0.2 s) and the
        # history package, which the keymap's data directory pulls in with SQLAlchemy (0.3 s), all come after.
        self.call_after_refresh(self._after_first_paint)
        # Textual lays out and renders the first screen while its start-up batch is still open, and drops that
        # frame: what followed were partial updates, painted on a blank terminal (the Lab without its panels'
        # borders, values and keys for two frames, in tmux and a pseudo-terminal). This runs after that frame,
        # still inside the batch: the first update after the batch covers every widget, so it is a whole one.
        self._paint_whole_screen()

    def update_styles(self, node: Any, animate: bool = True) -> None:
        """Textual's, except for a widget not yet in the DOM: its constructor setting `compact`, a class or
        a reactive restyled it (and its children) on the spot, and mounting styles it again from scratch.
        Before the Lab's first frame that was 48 restyles for nothing (16 ms of the start, measured in pairs)."""
        if node is not self and not node.is_attached:
            return
        super().update_styles(node, animate)

    def _paint_whole_screen(self) -> None:
        for child in self.screen.children:  # the screen itself is not among the compositor's widgets
            child.refresh()

    def _after_first_paint(self) -> None:
        self.first_frame_at = time.perf_counter()
        collector.release(freeze=True)  # held off since `tnr-lab` started, if it was
        if self.autoload:
            self.load_model(self.model_ref)  # the worker thread loads it; this returns at once
        # Importing them on the UI thread froze it for 0.3 s just as the user starts typing (measured).
        threading.Thread(target=self._import_deferred, name="tnr-lab-imports", daemon=True).start()

    def _import_deferred(self) -> None:
        """Off the UI thread: the libraries the first frame did without; then back to it to use them."""
        import tnr_tui.services.history  # noqa: F401  (SQLAlchemy, for the keymap's data directory)
        import tnr_tui.ui.screens.compare  # noqa: F401  (so that f3 and f4 do not wait for them)
        import tnr_tui.ui.screens.history  # noqa: F401

        import_image_library()
        # A message, as the device worker's are, not call_from_thread: that makes its coroutine before it finds
        # the event loop closed (an app quit within a second of its start), and Python then printed "coroutine
        # ... was never awaited" on the terminal the lab had just given back. A closed app drops a message.
        try:
            self.post_message(DeferredImported())
        except RuntimeError:  # the loop closed between the app's check and the call
            pass

    def on_deferred_imported(self, message: DeferredImported) -> None:
        self._deferred_ready()

    def _deferred_ready(self) -> None:
        self._apply_user_keymap()
        load_image_class()  # imported already: this mounts the image widgets of the pictures shown so far
        self.deferred_ready = True

    def _apply_user_keymap(self) -> None:
        try:
            path = self.resolved_data_dir() / KEYMAP_FILE
            if path.is_file():
                keymap = json.loads(path.read_text())
                if not isinstance(keymap, dict):
                    raise ValueError(f"{path.name} must be an object of binding ids and keys")
                defaults = binding_keys()
                known = set(defaults)
                unknown = sorted(str(k) for k in keymap if str(k) not in known)
                not_text = sorted(str(k) for k, v in keymap.items() if not isinstance(v, str) or not v.strip())
                usable = {str(k): v for k, v in keymap.items() if str(k) in known and str(k) not in not_text}
                self.set_keymap(usable)
                problems = ([f"unknown binding id(s) {', '.join(unknown)}"] if unknown else []) + (
                    [f"keys must be text: {', '.join(not_text)}"] if not_text else []
                )
                if problems:  # the rest of the file applies; the user learns what did not (found in tmux)
                    groups = sorted({k.split(".")[0] + "." for k in known})
                    self.notify(
                        f"keymap: {'; '.join(problems)} (ignored; ids start with {' '.join(groups)}, as lab.run:"
                        " README lists them)",
                        severity="warning",
                        markup=False,
                        timeout=10,
                    )
                clashes = keymap_clashes(usable, defaults)
                if clashes:  # applied as asked, but only one of each pair will ever run: say which keys
                    self.notify(
                        f"keymap: {'; '.join(clashes)}: only one of each runs (give one another key in {path.name})",
                        severity="warning",
                        markup=False,
                        timeout=10,
                    )
        except (OSError, ValueError) as exc:
            self.notify(f"keymap ignored: {exc}", severity="warning", markup=False)

    def resolved_data_dir(self) -> Path:
        from tnr_tui.services.history import resolve_data_dir

        return resolve_data_dir(self.data_dir)

    @property
    def store(self) -> Any:
        """The process's one handle on the history, shared by the UI thread and the device worker.

        A history that cannot be opened (corrupt, newer, a file where the data dir should be ...) raises
        HistoryUnavailable with the reason; callers turn it into a notification, never a crash.
        """
        with self._store_lock:
            return self._open_store()

    def _open_store(self) -> Any:
        if self._store is None:
            try:
                if self._store_fn is not None:
                    self._store = self._store_fn(self.data_dir)
                else:
                    from tnr_tui.services.history import open_store

                    # Its warnings (network filesystem) and "waiting for the history (held by another
                    # process)" become toasts: printed to stderr they would land in the middle of the screen.
                    self._store = open_store(self.data_dir, warn=self._history_warning)
            except Exception as exc:  # HistoryError, OSError, SQLAlchemy's errors: the message is what matters
                from tnr_tui.ui.worker import describe_error

                raise HistoryUnavailable(f"the history cannot be opened: {describe_error(exc)}") from exc
        return self._store

    def _history_warning(self, message: str) -> None:
        """From the store, in whichever thread waits (App.notify is thread-safe)."""
        self.notify(message, title="History", severity="warning", markup=False, timeout=8)

    async def action_quit(self) -> None:
        self._stop_worker()
        self.exit(0)

    def on_unmount(self) -> None:
        self._stop_worker()

    def _stop_worker(self) -> None:
        """Quitting: queued runs are closed as cancelled; the run in progress sees the stop flag at its next
        model evaluation. If it is still inside one after the wait (a large image on a CPU takes minutes), its
        rows are closed as cancelled here and `worker_stuck` tells the command to end the process without
        Python's shutdown: exiting the interpreter under a thread that is inside torch aborts the process
        ("terminate called without an active exception", exit 134, found in tmux)."""
        if self.worker_stuck:
            return
        dropped = self.worker.shutdown(timeout=0.5)
        closing = [(job.run_id, "cancelled before it started (the lab quit)") for job in dropped if job.run_id]
        if self.worker.alive:
            self.worker_stuck = True
            closing += [
                (run_id, "cancelled: the lab quit during a model evaluation") for run_id in self.worker.current_run_ids
            ]
        for run_id, reason in closing:
            try:
                self.store.finish_run(run_id, "cancelled", error=reason, if_live=True)
            except Exception:  # the row stays live; the next start of a lab or command marks it interrupted
                pass

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: Any = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast of the app, whoever raises it: user text in it (prompts quoted in warnings, paths,
        errors) shows its control characters as escapes; Textual would send them to the terminal raw."""
        super().notify(
            visible(message, keep_newlines=True),
            title=visible(title),
            severity=severity,
            timeout=timeout,
            markup=markup,
        )

    # ---- the worker, for screens ----

    @property
    def lab(self) -> LabScreen:
        return self.lab_screen

    def submit(self, request: GenerationRequest, owner: str = "lab", parent_id: str | None = None) -> int | None:
        """Queue a run: its history row is written now (`queued`), so it shows in the History at once.

        None (and an error notification) when the history cannot record it: nothing runs unrecorded.
        """
        origin = "rerun" if parent_id else "tui"
        try:
            run_id = self.store.create_run(request, status="queued", origin=origin, parent_id=parent_id)
        except Exception as exc:
            from tnr_tui.ui.worker import describe_error

            message = (
                str(exc) if isinstance(exc, HistoryUnavailable) else f"cannot record the run: {describe_error(exc)}"
            )
            self.notify(message, title="Not run", severity="error", markup=False, timeout=10)
            return None
        job_id = self.worker.submit(
            request, run_id=run_id, origin=origin, parent_id=parent_id, prerender=owner == "lab"
        )
        self.job_owner[job_id] = owner
        return job_id

    def submit_batch(self, requests: list[GenerationRequest], owner: str = "lab") -> list[int] | None:
        """Queue runs that differ only in the seed (or prompt) as one batch for the device worker: one history
        row each (`queued`), sampled together. None (and a notification) when the history refuses them."""
        run_ids = []
        for request in requests:
            try:
                run_ids.append(self.store.create_run(request, status="queued", origin="tui"))
            except Exception as exc:
                from tnr_tui.ui.worker import describe_error

                for run_id in run_ids:  # nothing half-queued: the ones already recorded are closed again
                    try:
                        self.store.finish_run(run_id, "cancelled", error="not queued")
                    except Exception:
                        pass
                message = (
                    str(exc) if isinstance(exc, HistoryUnavailable) else f"cannot record the run: {describe_error(exc)}"
                )
                self.notify(message, title="Not run", severity="error", markup=False, timeout=10)
                return None
        job_ids = self.worker.submit_batch(requests, run_ids)
        for job_id in job_ids:
            self.job_owner[job_id] = owner
        return job_ids

    def queue_text(self) -> str:
        """The queue as "running 1, 9 queued" while runs wait behind the one in progress (or about to
        start); "" when there is at most one run."""
        running, queued = self.worker.queue_counts()
        total = running + queued
        return f"running 1, {total - 1} queued" if total > 1 else ""

    def cancel_runs(self) -> bool:
        busy = self.worker.current_job is not None
        dropped = self.worker.cancel()
        unrecorded: list[str] = []
        for job in dropped:
            if job.run_id:
                try:
                    self.store.finish_run(job.run_id, "cancelled", error="cancelled before it started")
                except Exception as exc:  # the row stays `queued`; the next start marks it interrupted
                    from tnr_tui.ui.worker import describe_error

                    unrecorded.append(describe_error(exc))
            self.post_message(RunEnded(job.job_id, job.request, "cancelled", run_id=job.run_id))
        if busy or dropped:
            parts = (["1 running"] if busy else []) + ([f"{len(dropped)} queued"] if dropped else [])
            self.notify(f"cancelling {int(busy) + len(dropped)} run(s): {', '.join(parts)}", timeout=3, markup=False)
        if unrecorded:
            message = f"{len(unrecorded)} cancelled run(s) not recorded as cancelled: {unrecorded[0]}"
            self.notify(message, title="History", severity="error", markup=False, timeout=10)
        return busy or bool(dropped)

    def load_model(self, ref: str) -> None:
        self.model_ref = ref
        self.worker.load_model(ref)

    # ---- worker messages ----

    def on_model_state(self, message: ModelState) -> None:
        if self.lab.is_mounted:
            self.lab.show_model_state(message.ref, message.state, message.detail, message.default_scales)
        if message.state == "failed":
            self.notify(message.detail, title=f"Model {message.ref}", severity="error", markup=False, timeout=8)

    def on_run_started(self, message: RunStarted) -> None:
        if self.lab.is_mounted:
            self.lab.show_started(message.request)

    def on_run_progress(self, message: RunProgress) -> None:
        if self.lab.is_mounted:
            self.lab.show_progress(message)

    def on_run_preview(self, message: RunPreview) -> None:
        if self.lab.is_mounted:
            self.lab.show_preview(message)

    def on_run_ended(self, message: RunEnded) -> None:
        self.ended.append(message)
        if self.lab.is_mounted:
            self.lab.show_ended(message)
        if message.status == "failed":
            self.notify(message.error or "the run failed", title="Run failed", severity="error", markup=False)
        owner = self.job_owner.pop(message.job_id, "lab")
        for screen in (self._history_screen, self._compare_screen):
            if screen is not None and screen.is_mounted:
                screen.run_ended(message, owner)

    # ---- command palette ----

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for command in super().get_system_commands(screen):
            # Textual's own "Screenshot" delivers the file through the driver, which a terminal app's does not
            # take ("Failed to save screenshot", found in tmux); "Save screenshot" below writes it (f12).
            if command.title != "Screenshot":
                yield command
        yield SystemCommand("Run", "Run the request in the Lab panels (ctrl+r)", self._palette_run)
        yield SystemCommand("Cancel run", "Cancel the run in progress (escape)", self.cancel_runs)
        yield SystemCommand("New random seed", "Draw a new seed (ctrl+n)", self._palette_new_seed)
        yield SystemCommand("Load model", "Load the model named in the Model panel", self._palette_load)
        yield SystemCommand("Lab", "Show the Lab (f2)", lambda: self.switch_mode("lab"))
        yield SystemCommand("History", "Browse the run history (f3)", lambda: self.switch_mode("history"))
        yield SystemCommand("Compare", "Compare methods and scales (f4)", lambda: self.switch_mode("compare"))
        yield SystemCommand("Save screenshot", "Save an SVG of the screen (f12)", self.action_screenshot)

    def _palette_run(self) -> None:
        self.switch_mode("lab")
        self.lab.action_run()

    def _palette_new_seed(self) -> None:
        self.lab.action_new_seed()

    def _palette_load(self) -> None:
        self.lab.action_load_model()

    def action_screenshot(self) -> None:
        path = self.save_screenshot(path=str(self.resolved_data_dir()))
        self.notify(f"screenshot saved: {path}", markup=False)
