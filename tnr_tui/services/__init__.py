"""The lab's headless core: running requests into the history, the history itself, sweeps and studies.

No textual and no argparse here (tests/test_layering.py reads the imports); torch and the engine's heavy parts
load lazily, inside the functions that sample. The UI (tnr_tui.ui) and the CLI (tnr_tui.cli) sit on top.
"""
