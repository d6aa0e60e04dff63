"""The lab's stylesheet: Textual's, without parsing every source three times before the first frame.

When the first screen is installed Textual calls `App.refresh_css`, which does `set_variables` and then
`reparse`. `set_variables` empties the parse cache even when the variables are the ones already in use, and
`reparse` parses every source again into a new stylesheet, whose cache it then drops; so the next widget class
to mount (the Header) found the cache empty and parsed everything a third time. That was 35 parses of 42 ms
where 12 are needed (app.tcss alone is ~7 ms a pass), measured before the Lab's first frame.

Here `set_variables` with the variables in use keeps the cache, and `reparse` parses through this stylesheet's
own cache. That gives the same rules, because the cache only ever holds parses made with the current variables:
`set_variables` still empties it when they change (a theme change), and a source's text is part of its key (an
edited file misses it).
"""

from __future__ import annotations

from textual.css.stylesheet import Stylesheet


class LabStylesheet(Stylesheet):
    @classmethod
    def taking_over(cls, stylesheet: Stylesheet, variables: dict[str, str]) -> LabStylesheet:
        """A LabStylesheet with `stylesheet`'s sources, for `variables` (the app's CSS variables)."""
        replacement = cls(variables=variables)
        replacement.source = dict(stylesheet.source)
        return replacement

    def set_variables(self, variables: dict[str, str]) -> None:
        if variables == getattr(self, "_variables", None):
            return  # the same variables: every cached parse still holds
        super().set_variables(variables)

    def reparse(self) -> None:
        if getattr(self, "_invalid_css", None):
            # A source that failed before: `parse` skips it, Textual's reparse raises its errors again.
            super().reparse()
            return
        self.parse()
