"""Images in the terminal through textual-image, with the protocol chosen once before the app starts.

textual-image 0.12 probes the terminal when it is imported, one query at a time with a 0.1 s timeout per
byte. Over a slow SSH link the reply arrives after the timeout and is then typed into the focused input.
So the lab probes itself, in one batch that ends with a Primary Device Attributes query (every terminal
answers it, and answers in order), reads until that answer with a generous timeout, before Textual starts.
Late replies are consumed here and never reach Textual. textual-image is imported later, after the app's
first frame, with its own probing masked (so the import touches no terminal).
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Container

from tnr_tui.services.text import visible
from tnr_tui.ui.widgets.line import Line

PROTOCOLS: tuple[str, ...] = ("auto", "tgp", "sixel", "halfcell", "unicode", "none")
ENV_PROTOCOL = "TNR_LAB_IMAGE_PROTOCOL"

_KITTY_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"
_CELL_QUERY = "\x1b[16t"
_DA1_QUERY = "\x1b[c"
_DA1_REPLY = re.compile(r"\x1b\[\?([\d;]*)c")
_CELL_REPLY = re.compile(r"\x1b\[6;(\d+);(\d+)t")
_KITTY_OK = re.compile(r"\x1b_Gi=31;OK\x1b\\")


@dataclass(frozen=True)
class TerminalCaps:
    sixel: bool = False
    kitty: bool = False
    cell_size: tuple[int, int] | None = None  # (width, height) in pixels
    answered: bool = False  # the terminal answered the device-attributes query in time


def parse_probe_reply(reply: str) -> TerminalCaps:
    """Read the terminal's answers to the batched probe (pure function, tested without a terminal)."""
    da1 = _DA1_REPLY.search(reply)
    cell = _CELL_REPLY.search(reply)
    return TerminalCaps(
        sixel=bool(da1) and "4" in da1.group(1).split(";"),
        kitty=bool(_KITTY_OK.search(reply)),
        cell_size=(int(cell.group(2)), int(cell.group(1))) if cell else None,
        answered=bool(da1),
    )


def under_multiplexer(env: Any) -> bool:
    """tmux and GNU screen: they take an APC string (the kitty query) as the window title, and pass no
    kitty graphics through anyway."""
    return bool(env.get("TMUX") or env.get("STY")) or str(env.get("TERM", "")).startswith(("screen", "tmux"))


def probe_queries(env: Any) -> str:
    """The batched probe: kitty graphics (not under a multiplexer), cell size, device attributes last."""
    kitty = "" if under_multiplexer(env) else _KITTY_QUERY
    return kitty + _CELL_QUERY + _DA1_QUERY


def probe_terminal(timeout: float = 2.0) -> TerminalCaps:
    """Send all queries at once and read until the device-attributes answer (or the timeout)."""
    if sys.platform == "win32" or not (sys.__stdin__ and sys.__stdout__):
        return TerminalCaps()
    if not (sys.__stdin__.isatty() and sys.__stdout__.isatty()):
        return TerminalCaps()
    import select
    import termios
    import tty

    fd = sys.__stdin__.fileno()
    saved = termios.tcgetattr(fd)
    reply = ""
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        sys.__stdout__.write(probe_queries(os.environ))
        sys.__stdout__.flush()
        deadline = time.monotonic() + timeout
        while not _DA1_REPLY.search(reply):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            reply += os.read(fd, 1024).decode(errors="replace")
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    return parse_probe_reply(reply)


def choose_protocol(requested: str, caps: TerminalCaps | None = None, *, is_tty: bool = True) -> str:
    """The concrete protocol for a requested one ('auto' resolves with the probe's answers)."""
    if requested not in PROTOCOLS:
        raise ValueError(f"unknown image protocol {requested!r}; choose one of: {', '.join(PROTOCOLS)}")
    if requested != "auto":
        return requested
    if not is_tty:
        return "unicode"
    caps = caps or TerminalCaps()
    # The same order as textual-image: Konsole and WezTerm report kitty graphics but draw sixels better.
    if caps.sixel:
        return "sixel"
    if caps.kitty:
        return "tgp"
    return "halfcell"


class _NotATerminal:
    """Stands in for sys.__stdout__ while textual-image is imported, so that it does not probe."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_chosen: str | None = None
_cell_size: tuple[int, int] | None = None  # from the probe, else the tty's ioctl
_image_class: Any = None
_waiting: list[Picture] = []  # mounted pictures that have no image widget yet


def prepare_images(requested: str = "auto", *, probe: bool = True) -> str:
    """Choose the protocol, probing the terminal if needed; call before App.run (the TUI path only).

    Only the probe must happen before Textual owns stdin. Importing textual-image (numpy, PIL, its
    renderers: about 0.1-0.2 s) is left to `load_image_class`, which the app calls after its first frame;
    the import is masked so that it never probes, so it is safe at any time.
    """
    global _chosen, _cell_size, _image_class
    caps = TerminalCaps()
    is_tty = bool(sys.__stdout__ and sys.__stdout__.isatty())
    if requested == "auto" and probe and is_tty:
        caps = probe_terminal()
    protocol = choose_protocol(requested, caps, is_tty=is_tty)
    if protocol != _chosen:
        _image_class = None  # another app in this process (tests) chose another protocol
        _waiting.clear()
    _chosen, _cell_size = protocol, caps.cell_size or _ioctl_cell_size()
    return protocol


def import_image_library() -> Any:
    """Import textual-image (once, with its own terminal probing masked) and return the widget class for the
    chosen protocol (None when images are off). Touches no widget, so a background thread may call it."""
    global _image_class
    if _chosen in (None, "none"):
        return None
    if _image_class is None:
        saved = sys.__stdout__
        sys.__stdout__ = _NotATerminal(saved)  # type: ignore[misc]
        try:
            import textual_image.widget as tiw
            from textual_image._terminal import CellSize, get_cell_size
        finally:
            sys.__stdout__ = saved  # type: ignore[misc]
        if _cell_size:
            get_cell_size._result = CellSize(*_cell_size)  # type: ignore[attr-defined]
        classes = {"tgp": tiw.TGPImage, "sixel": tiw.SixelImage, "halfcell": tiw.HalfcellImage}
        chosen = classes.get(str(_chosen), tiw.UnicodeImage)
        _image_class = _steady_size(
            chosen,
            cache_lines=chosen in (tiw.HalfcellImage, tiw.UnicodeImage),
            fast_halfcell=chosen is tiw.HalfcellImage,
        )
    return _image_class


def _steady_size(image_class: Any, *, cache_lines: bool = False, fast_halfcell: bool = False) -> Any:
    """The protocol's widget, except that a new image of the same pixel size as the one shown is not a
    layout pass of the whole screen (textual-image's setter asks for one every time; during a run every
    preview has the same size, and each layout re-rendered every widget: measured with bench/tui_latency.py).
    `Picture.show` sets `steady` around the assignment when the sizes match.

    With `cache_lines` (the text renderers, half cells and unicode blocks) the lines drawn for an image are
    kept until the image, the crop or the size changes: Textual repaints the bounding box of everything that
    changed, so each step's plot and progress line made the picture beside them draw itself again (~10 ms of
    the UI thread a step), though it changes only with a preview.

    With `fast_halfcell` the half-cell widget's content lines come from widgets/halfcell.py (the same strips,
    about ten times faster) wherever Textual's own path would only add the base style: no text selection,
    content aligned left and top, no link metadata in the base style. Anything else takes textual-image's
    path as before."""

    renderable = getattr(image_class, "_Renderable", None)
    if renderable is None:  # not textual-image's Image base as this version has it: the widget as it is
        return image_class

    class SteadyImage(image_class, Renderable=renderable):  # type: ignore[misc, valid-type, call-arg]
        steady = False

        _drawn: tuple[Any, list[Any]] | None = None

        def refresh(self, *regions: Any, **kwargs: Any) -> Any:
            if self.steady:
                kwargs["layout"] = False
            return super().refresh(*regions, **kwargs)

        def render_lines(self, crop: Any) -> Any:
            if not cache_lines:
                return super().render_lines(crop)
            # The image object itself is in the key (kept alive by it, so never another image at its id).
            key = (self.image, crop, self.size, self.app.current_theme.name)
            if _kept_for(self._drawn, key):
                return list(self._drawn[1])  # type: ignore[index]
            lines = super().render_lines(crop)
            self._drawn = (key, list(lines))
            return lines

        _strips: tuple[Any, list[Any]] | None = None
        _table: Any = None
        prepared: tuple[Any, list[Any]] | None = None  # lines drawn ahead by the worker (halfcell.prepare)
        prerender_target = False  # publish this widget's geometry for the worker (the Lab's run preview)

        def render_line(self, y: int) -> Any:
            strips = self._fast_strips() if fast_halfcell else None
            if strips is None:
                return super().render_line(y)
            self._dirty_regions.clear()  # what Textual's render_line would have re-rendered for
            if y < len(strips):
                return strips[y]
            from textual.strip import Strip

            return Strip.blank(self.size.width, self.visual_style.rich_style)

        def _fast_strips(self) -> list[Any] | None:
            """The content lines by widgets/halfcell.py, or None where Textual's path may do more than add
            the base style (then it draws them, as textual-image does)."""
            image = self.image
            if image is None or self.BLANK or self.text_selection is not None:
                return None
            if tuple(self.styles.content_align) != ("left", "top"):
                return None
            base = self.visual_style.rich_style
            if base._meta is not None:  # a link style could apply (Visual.to_strips)
                return None
            from PIL import Image as PILImage

            if not isinstance(image, PILImage.Image):  # a path or a stream: textual-image opens it
                return None
            from tnr_tui.ui.widgets.halfcell import Geometry, SegmentTable

            if self._table is None or self._table.base != base:
                self._table = SegmentTable(base)
            width, height = self.size
            geometry = Geometry(width, height, *self._get_styled_size(), self._table)
            key = geometry.key(image)
            if _kept_for(self._strips, key):
                return self._strips[1]  # type: ignore[index]
            if self.prerender_target:
                global _preview_geometry
                _preview_geometry = geometry
            prepared, self.prepared = self.prepared, None
            # Lines the worker drew for this very image, size and style, else drawn here.
            strips = prepared[1] if _kept_for(prepared, key) else geometry.draw(image)
            self._strips = (key, strips)
            return strips

    return SteadyImage


_preview_geometry: Any = None  # where the Lab's run preview last drew (halfcell.Geometry), for `prerender`


def prerender(image: Any) -> Any:
    """The half-cell lines of `image` for the Lab's run preview, drawn now, on the calling thread (the
    worker's, as it posts the image), or None (another protocol, nothing drawn yet). `Picture.show(...,
    prepared=)` hands them to the widget, which uses them if its geometry has not changed since.

    A decoded image has a new colour in nearly every cell: drawing its 1568 cells took ~15 ms of the UI
    thread, and every fifth step's frame (decode_every 5) was the event loop's longest (bench/tui_latency.py)."""
    geometry = _preview_geometry
    if geometry is None or image is None or _chosen != "halfcell":
        return None
    from tnr_tui.ui.widgets.halfcell import prepare

    return prepare(image, geometry)


def _kept_for(kept: tuple[Any, Any] | None, key: tuple[Any, ...]) -> bool:
    """Whether `kept` = (its key, what was drawn) was drawn for `key`: the image (the key's first item) is the
    very same object (PIL's == would compare every pixel), the rest equal."""
    return kept is not None and kept[0][0] is key[0] and kept[0][1:] == key[1:]


def load_image_class() -> Any:
    """Import textual-image if needed and give each waiting Picture its image widget (the UI thread only);
    returns the widget class for the chosen protocol (None when images are off)."""
    image_class = import_image_library()
    waiting = list(_waiting)
    _waiting.clear()
    for picture in waiting:
        if picture.is_attached:
            picture.attach_image()
    return image_class


def _ioctl_cell_size() -> tuple[int, int] | None:
    try:
        import fcntl
        import struct
        import termios

        rows, cols, px_w, px_h = struct.unpack("HHHH", fcntl.ioctl(sys.__stdout__, termios.TIOCGWINSZ, b"\0" * 8))
        if rows and cols and px_w and px_h:
            return px_w // cols, px_h // rows
    except Exception:  # no terminal, or a platform without the ioctl
        return None
    return None


def chosen_protocol() -> str:
    return _chosen or "none"


THUMBNAIL_MAX_PIXELS = 64_000_000  # a larger stored image is refused: decoding it would stall the UI thread


def read_image(path: Path | None, max_px: int = 256) -> tuple[Any, str]:
    """(thumbnail, "") from an image file, or (None, "image unreadable: reason"): the one place the TUI
    decodes a stored file. A missing, damaged, non-image or huge file is a caption, never an exception."""
    if path is None:
        return None, "image unreadable: no path recorded"
    try:
        if not path.is_file():  # a FIFO or a device would block Image.open on the UI thread
            why = "not a regular file" if path.exists() else "no such file"
            return None, f"image unreadable: {why}: {path}"
        import warnings

        from PIL import Image, UnidentifiedImageError

        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not printed to the tty
            with Image.open(path) as img:
                width, height = img.size
                if width * height > THUMBNAIL_MAX_PIXELS:
                    return None, f"image unreadable: too large to show ({width}x{height}): {path}"
                image = img.convert("RGB")  # decodes it all: a truncated file fails here
    except UnidentifiedImageError:
        return None, f"image unreadable: not an image file: {path}"
    except Exception as exc:  # OSError, PIL's decoder errors (SyntaxError, ValueError, bombs ...)
        reason = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
        return None, f"image unreadable: {reason}: {path}"
    image.thumbnail((max_px, max_px))
    return image, ""


def _same_box(widget: Any, shown: Any, image: Any) -> bool:
    """Whether `image` takes the same cells as `shown` in `widget`, so that showing it needs no layout: the
    same pixel size, or a widget whose width and height are set in the stylesheet (not `auto`), which the
    image does not change. During a run the Lab's preview alternates the latent preview (8x8 pixels on the
    embedded model) with decoded images (64x64) in its fixed 56x28 box: each switch was a layout of the
    whole screen (~18 ms of the UI thread, measured during a run), and so was its first image."""
    width, height = widget.styles.width, widget.styles.height
    if width is not None and height is not None and not width.is_auto and not height.is_auto:
        return True  # the box is the stylesheet's, with an image or without
    if image is None or shown is None:
        return False
    return getattr(shown, "size", None) == getattr(image, "size", ())


class Picture(Container):
    """An image with a caption; shows the caption alone when images are off or there is none yet.

    Before textual-image is loaded (the first frame) the picture is the caption alone; `load_image_class`
    then mounts the image widget above it.
    """

    DEFAULT_CSS = """
    Picture { height: auto; }
    Picture > .picture-image { width: auto; height: auto; max-height: 24; }
    Picture > .picture-caption { height: auto; color: $text-muted; }
    """

    def __init__(
        self, caption: str = "", *, id: str | None = None, classes: str | None = None, prerender: bool = False
    ) -> None:
        """`prerender`: the picture `prerender` draws for ahead of time (one per app: the Lab's run preview)."""
        super().__init__(id=id, classes=classes)
        self._caption = caption
        self._image_widget: Any = None
        self._prerender = prerender
        self.pil_image: Any = None  # the PIL image shown now (tests read it)

    def _new_image_widget(self, image: Any) -> Any:
        widget = _image_class(image, classes="picture-image")
        if hasattr(widget, "prerender_target"):
            widget.prerender_target = self._prerender
        return widget

    def compose(self) -> ComposeResult:
        if _image_class is not None:
            self._image_widget = self._new_image_widget(None)
            yield self._image_widget
        elif _chosen not in (None, "none"):
            _waiting.append(self)
        yield Line(escape(visible(self._caption, keep_newlines=True)), classes="picture-caption", markup=True)

    def attach_image(self) -> None:
        """Mount the image widget (textual-image is loaded by now), showing the current picture."""
        if self._image_widget is None and _image_class is not None:
            self._image_widget = self._new_image_widget(self.pil_image)
            self.mount(self._image_widget, before=0)

    def show(self, image: Any, caption: str | None = None, *, prepared: Any = None) -> None:
        """Show a PIL image (None clears it); the caption is plain text, shown literally. `prepared`: its
        lines as `prerender` drew them (used only where they fit)."""
        self.pil_image = image
        if self._image_widget is None and _chosen not in (None, "none"):
            load_image_class()  # a picture before the app's first frame was over: load it now
            self.attach_image()
        elif self._image_widget is not None:
            widget = self._image_widget
            widget.steady = hasattr(widget, "steady") and _same_box(widget, widget.image, image)
            if hasattr(widget, "prepared"):
                widget.prepared = prepared
            try:
                widget.image = image
            finally:
                widget.steady = False
        if caption is not None:
            self.set_caption(caption)

    def set_caption(self, caption: str) -> None:
        self._caption = caption
        # User text (prompts, paths, errors) in a caption: control characters shown, never sent to the tty.
        # A run's previews change it at every shown step: no layout pass while it fits one line (widgets/line.py).
        self.query_one(".picture-caption", Line).set(escape(visible(caption, keep_newlines=True)))
