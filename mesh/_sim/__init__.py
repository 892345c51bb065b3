"""A deterministic simulation of a mesh, in virtual time: nodes made of the node's pure cores
(failure detector, dispatcher, dedup window, peer map) and a small driver that follows the
node's rules, over an in-memory network with a seeded schedule of faults (partitions, pauses,
crashes, goodbyes). It checks at-least-once delivery and the failure detector's bounds over
thousands of schedules, and runs meshes of hundreds or thousands of nodes that no machine here
could start for real. ``python -m mesh._sim --help``; docs/simulation.md says what it models.
"""

from __future__ import annotations

from ._driver import SimNode
from ._schedule import FAULT_KINDS, Fault, Schedule, SimSettings, generate
from ._world import Result, Violation, World, count_faults, run

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "Schedule",
    "SimSettings",
    "generate",
    "run",
    "Result",
    "Violation",
    "World",
    "SimNode",
    "count_faults",
]
