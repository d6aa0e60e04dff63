"""The Textual lab: the app, its device worker, screens and widgets. No torch at import time."""
