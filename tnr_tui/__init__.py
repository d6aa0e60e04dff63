"""tnr-lab's application: the Textual lab, the CLI and the run history. No torch at import time."""

__version__ = "0.1.0"
