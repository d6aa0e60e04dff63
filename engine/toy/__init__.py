"""The embedded toy model's world: rendered shapes, their prompt grammar, and the checker that grades images.

Training (`python -m engine.toy.train`) and evaluation (`python -m engine.toy.evaluate`) are modules of
this package; importing the package itself loads only numpy and PIL.
"""

from engine.toy.check import CheckResult, check
from engine.toy.data import COLOURS, SHAPES, Scene, all_scenes, parse_prompt, render

__all__ = ["COLOURS", "SHAPES", "CheckResult", "Scene", "all_scenes", "check", "parse_prompt", "render"]
