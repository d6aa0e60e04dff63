"""The sigma schedules: one module per family, each registering its units with `engine.units.SCHEDULES`.

Importing this package is torch-free; the trained table they work over is `engine.schedule.Schedule`.
"""

from __future__ import annotations

from engine.schedules.base import SigmaSchedule

__all__ = ["SigmaSchedule"]
