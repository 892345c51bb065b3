"""What a simulated run is made of: its settings, and its faults, drawn from a seed. Pure: plain
values and `random.Random`, nothing else.

A schedule is a plain list of `Fault` records, printable as JSON and read back (`to_json`,
`from_json`), so that any run can be replayed exactly: the seed drives the network's draws and the
workload, the fault list says what breaks when. The faults are drawn from their own stream of the
seed, so a fault list edited by hand (to shrink a failing case) replays with the same network.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .._detector import DetectorSettings

#: The kinds of fault, in the order the summary lists them.
FAULT_KINDS = ("partition", "pause", "crash", "leave")


@dataclass(frozen=True, slots=True)
class SimSettings:
    """One simulated mesh: its size, workload, network and node settings (times in virtual
    seconds).

    Nodes `0 .. workers - 1` offer the service; the others push `tasks_per_pusher` tasks each, at
    times drawn in `[0, duration]`. Faults happen in `[0.2, duration]`. The run ends `heal`
    seconds after the last fault ends once every task is settled, or at `duration + settle`.
    Every message is dropped with probability `drop`, duplicated with `duplicate`, and arrives
    `delay` plus up to `jitter` seconds after it is sent; tasks, acks and goodbyes keep their
    order on each link (as on one TCP connection), heartbeats do not (datagrams).
    """

    nodes: int = 6
    workers: int | None = None  # default: half the nodes
    duration: float = 4.0
    heal: float = 4.0
    settle: float = 12.0
    tasks_per_pusher: int = 10
    task_time: float = 0.05  # each task takes up to this long (drawn), at least a tenth of it
    drop: float = 0.02
    duplicate: float = 0.01
    delay: float = 0.001
    jitter: float = 0.01
    hint_delay: float = 0.005  # from a crash to its peers' socket monitors' DISCONNECTED
    max_faults: int = 4
    detector: DetectorSettings = field(default_factory=lambda: DetectorSettings(forget_after=120.0))
    max_in_flight: int = 8
    prefetch: int = 4
    max_attempts: int = 5
    ack_timeout: float = 1.0
    dedup_window: int = 10_000
    #: Heartbeats in a row the stall bound lets the network lose (see `stall_bound`).
    lost_beats: int = 6

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError("a mesh needs at least 2 nodes")
        if not 1 <= self.worker_count < self.nodes:
            raise ValueError("workers must be at least 1 and fewer than nodes")
        for name in ("drop", "duplicate"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5)")

    @classmethod
    def for_nodes(cls, nodes: int, **changes: Any) -> SimSettings:
        """Settings for `nodes` nodes: the defaults up to 64 nodes; above, a scale run that stays
        within a minute or two of CPU (heartbeats are N^2 messages an interval): heartbeats every
        second, faults and pushes in the first second (faults up to a second long), a task per
        pusher."""
        if nodes > 64:
            big: dict[str, Any] = {
                "duration": 1.0,
                "heal": 3.0,
                "settle": 5.0,
                "tasks_per_pusher": 1,
                "max_faults": 3,
                "detector": DetectorSettings(heartbeat_interval=1.0, forget_after=120.0),
            }
            big.update(changes)
            changes = big
        return cls(nodes=nodes, **changes)

    @property
    def worker_count(self) -> int:
        return self.nodes // 2 if self.workers is None else self.workers

    @property
    def max_delay(self) -> float:
        """The longest a message that arrives can take."""
        return self.delay + self.jitter

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults (the detector's likewise)."""
        default = SimSettings(nodes=self.nodes)
        out: dict[str, Any] = {"nodes": self.nodes}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "detector":
                changed = {
                    k: v for k, v in asdict(value).items() if getattr(default.detector, k) != v
                }
                if changed:
                    out["detector"] = changed
            elif value != getattr(default, f.name):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimSettings:
        data = dict(data)
        detector = data.pop("detector", None)
        settings = cls(**data)
        if detector:
            settings = replace(settings, detector=replace(settings.detector, **detector))
        return settings


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault. `partition`: the nodes in `group` are cut from the others for
    `length` seconds from `at`. `pause`: `node` stands still (SIGSTOP) for `length` seconds.
    `crash`: `node` stops for good. `leave`: `node` hands back its tasks, says goodbye and stops.
    """

    kind: str
    at: float
    node: int = -1
    length: float = 0.0
    group: tuple[int, ...] = ()

    @property
    def end(self) -> float:
        return self.at + self.length

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "at": self.at}
        if self.kind == "partition":
            out.update(length=self.length, group=list(self.group))
        else:
            out["node"] = self.node
            if self.kind == "pause":
                out["length"] = self.length
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        if data["kind"] not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {data['kind']!r}")
        return cls(
            data["kind"],
            float(data["at"]),
            int(data.get("node", -1)),
            float(data.get("length", 0.0)),
            tuple(int(n) for n in data.get("group", ())),
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """A run to do: its seed (the network's and the workload's draws), settings and faults."""

    seed: int
    settings: SimSettings
    faults: tuple[Fault, ...]

    def __post_init__(self) -> None:
        n = self.settings.nodes
        for fault in self.faults:
            nodes = fault.group if fault.kind == "partition" else (fault.node,)
            if not all(0 <= node < n for node in nodes) or fault.length < 0:
                raise ValueError(f"fault {fault.to_dict()} does not fit {n} nodes")

    def to_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "settings": self.settings.to_dict(),
                "faults": [f.to_dict() for f in self.faults],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """Raises `ValueError` (json's included) for text that is not a schedule."""
        data = json.loads(text)
        return cls(
            int(data["seed"]),
            SimSettings.from_dict(data.get("settings", {})),
            tuple(Fault.from_dict(f) for f in data.get("faults", ())),
        )


def generate(seed: int, settings: SimSettings) -> Schedule:
    """The schedule of `seed`: up to `max_faults` faults, drawn in `[0.2, duration]`. Crashes and
    leaves spare at least one worker and one pusher, so that the work can always be done."""
    rng = random.Random(f"{seed}/faults")
    n = settings.nodes
    workers = list(range(settings.worker_count))
    pushers = list(range(settings.worker_count, n))
    faults = []
    for _ in range(rng.randint(0, settings.max_faults)):
        kind = rng.choice(FAULT_KINDS)
        at = round(rng.uniform(0.2, settings.duration), 3)
        if kind == "partition":
            size = rng.randint(1, max(1, n // 2))
            group = tuple(sorted(rng.sample(range(n), size)))
            length = round(rng.uniform(0.1, min(2.0, settings.duration)), 3)
            faults.append(Fault(kind, at, length=length, group=group))
        elif kind == "pause":
            length = round(rng.uniform(0.05, min(1.5, settings.duration)), 3)
            faults.append(Fault(kind, at, rng.randrange(n), length))
        else:
            # A node stops for good: never the last worker or the last pusher standing.
            pool = (workers if len(workers) > 1 else []) + (pushers if len(pushers) > 1 else [])
            if not pool:
                continue
            node = rng.choice(pool)
            (workers if node in workers else pushers).remove(node)
            faults.append(Fault(kind, at, node))
    faults.sort(key=lambda f: (f.at, f.kind, f.node))
    return Schedule(seed, settings, tuple(faults))
