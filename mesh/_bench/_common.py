"""What every benchmark shares: the result record, the pool of spawned processes that play the
roles, bounded waits on them, and the statistics."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import zmq

from .._types import Gap

if TYPE_CHECKING:
    from .._keys import KeyPair
    from .._types import Message

#: Seconds without a message after which a receiving role stops waiting for the rest.
QUIET = 2.0
#: Seconds a benchmark waits for any one answer from a role before giving up.
ANSWER_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Measurement:
    """One benchmark result: the median over `runs`, its `min` and `max`, and the plain pyzmq
    baseline measured in the same runs beside it (None where plain pyzmq has no such thing, as
    for discovery); `ratio` is value / baseline. `lost` counts messages sent and never received
    (or runs that produced no sample).

    A keyed measurement (`keys`: ``mesh-cli bench --keys``) had CurveZMQ on, in the mesh and in
    its plain pyzmq baseline alike; it follows the open measurement of the same name, and
    `vs_open` is its value / the open one's, `baseline_vs_open` the same for plain pyzmq (what
    CURVE costs pyzmq itself). Both are None for an open measurement."""

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    runs: int
    min: float
    max: float
    lost: int
    keys: bool = False
    vs_open: float | None = None
    baseline_vs_open: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summary(
    name: str,
    unit: str,
    samples: Sequence[float],
    baselines: Sequence[float] = (),
    *,
    runs: int,
    lost: int = 0,
    digits: int = 0,
) -> Measurement:
    """The median, min and max of `samples` (NaN with none), next to the median of `baselines`."""
    values = list(samples) or [math.nan]
    value = statistics.median(values)
    baseline = statistics.median(baselines) if baselines else None
    return Measurement(
        name=name,
        value=_round(value, digits),
        unit=unit,
        baseline=None if baseline is None else _round(baseline, digits),
        ratio=_ratio(value, baseline),
        runs=runs,
        min=_round(min(values), digits),
        max=_round(max(values), digits),
        lost=lost,
    )


def _ratio(value: float | None, of: float | None) -> float | None:
    if value is None or of is None or of <= 0 or math.isnan(value) or math.isnan(of):
        return None
    return round(value / of, 3)


def against_open(opened: Sequence[Measurement], keyed: Sequence[Measurement]) -> list[Measurement]:
    """Each open measurement followed by its keyed twin (same place in `keyed`), marked as keyed
    and with its cost against the open one."""
    paired: list[Measurement] = []
    for open_one, keyed_one in zip(opened, keyed, strict=True):
        paired.append(open_one)
        paired.append(
            replace(
                keyed_one,
                keys=True,
                vs_open=_ratio(keyed_one.value, open_one.value),
                baseline_vs_open=_ratio(keyed_one.baseline, open_one.baseline),
            )
        )
    return paired


def modes(key: KeyPair | None) -> tuple[KeyPair | None, ...]:
    """What each run measures in turn: open, and with `key` keyed too (one after the other in
    every run, so that both see the same load)."""
    return (None,) if key is None else (None, key)


# -- CURVE for the plain pyzmq baselines ------------------------------------------------------
#
# Every node and socket of a keyed run shares one key pair, as the mesh's nodes do (a node
# always allows its own key). No ZAP handler runs beside the plain sockets, so libzmq takes any
# client key: the mesh's ZAP handler is asked once a connection, at its handshake, which no
# throughput or round trip counts; per message both pay the same CURVE encryption.


def curve_server(sock: zmq.Socket[Any], key: KeyPair | None) -> None:
    """Make `sock` (a binding socket) a CURVE server with `key`; nothing without one."""
    if key is not None:
        sock.curve_secretkey = key.secret.encode()
        sock.curve_server = True


def curve_client(sock: zmq.Socket[Any], key: KeyPair | None) -> None:
    """Make `sock` (a connecting socket) a CURVE client of a server with `key`, with `key`
    itself; nothing without one."""
    if key is not None:
        sock.curve_secretkey = key.secret.encode()
        sock.curve_publickey = key.public.encode()
        sock.curve_serverkey = key.public.encode()


def _round(value: float, digits: int) -> float:
    if math.isnan(value):
        return value
    return round(value) if digits == 0 else round(value, digits)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `samples` (nearest rank)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def event_body(item: Message | Gap) -> Any:
    """An event's body; a `Gap` (events lost) fails the run: the mesh's figures are for
    lossless delivery, as plain pyzmq's with backpressure are."""
    if isinstance(item, Gap):
        raise RuntimeError(f"events were lost: {item}")
    return item.body


def clock() -> float:
    """The clock every role times with: CLOCK_MONOTONIC, the same in every process of the
    machine, so times taken in different processes can be subtracted."""
    return time.monotonic()


# -- the pool of role processes ---------------------------------------------------------------


class RoleFailed(str):
    """Sent by a pool process in place of an answer when its role raised: the traceback."""


_FINISHED = "role finished"
#: Seconds the pool's processes get to exit on their own when it closes, before they are killed.
_GRACE = 3.0


class Pool:
    """`size` spawned (never forked) processes, each playing one role at a time.

    A role is a module-level function ``role(control, *args)`` run in the process; it talks to
    the benchmark over `control` (its end of a pipe) and ends by returning. Processes are reused
    from run to run (spawning one costs about 0.3 s of import), but every role opens its own
    sockets and nodes and closes them before it returns. Use as a context manager: leaving it
    (normally, on an error or on Ctrl-C) ends every process, killing (by pid, ours only) any
    that does not exit within a few seconds. A process whose role was killed on purpose (by a
    failure benchmark) is simply reaped.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._spawn = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        self._controls: list[Connection] = []

    def __enter__(self) -> Pool:
        try:
            for _ in range(self.size):
                parent_end, child_end = self._spawn.Pipe()
                process = self._spawn.Process(target=_serve, args=(child_end,), daemon=True)
                self._processes.append(process)
                self._controls.append(parent_end)
                process.start()
                child_end.close()
            for control in self._controls:
                receive(control)  # imported and waiting for a role
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def pid(self, index: int) -> int:
        pid = self._processes[index].pid
        assert pid is not None
        return int(pid)

    def pids(self) -> list[int]:
        return [self.pid(index) for index in range(self.size)]

    def start(self, index: int, role: Callable[..., None], *args: Any) -> Connection:
        """Start `role` in process `index`; returns the pipe to talk to it."""
        control = self._controls[index]
        control.send((role, args))
        return control

    def finish(self, index: int, timeout: float = ANSWER_TIMEOUT) -> None:
        """Wait for the role in process `index` to return (its nodes and sockets closed)."""
        answer = receive(self._controls[index], timeout)
        if answer != _FINISHED:
            raise RuntimeError(f"benchmark role sent {answer!r} where it should have finished")

    def close(self) -> None:
        for control in self._controls:
            with contextlib.suppress(OSError):  # the process may be gone already
                control.send(None)
            # Closed, so that a role still waiting on its pipe gets EOF rather than hanging.
            control.close()
        deadline = time.monotonic() + _GRACE
        for process in self._processes:
            if process.pid is None:
                continue
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self._processes.clear()
        self._controls.clear()


def _serve(control: Connection) -> None:
    """A pool process: run each role the benchmark sends, until told to stop."""
    try:
        control.send("up")
    except OSError:  # the benchmark is gone already
        return
    while True:
        try:
            job = control.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # the benchmark is gone
            return
        if job is None:
            return
        role, args = job
        try:
            role(control, *args)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                control.send(RoleFailed("".join(traceback.format_exception(exc)).strip()))
            if not isinstance(exc, Exception):
                return
        else:
            try:
                control.send(_FINISHED)
            except OSError:  # the benchmark is gone (Ctrl-C, or it gave up on us)
                return


def receive(control: Connection, timeout: float = ANSWER_TIMEOUT) -> Any:
    """The next answer from a role, within `timeout` seconds; raises if the role failed."""
    if not control.poll(timeout):
        raise TimeoutError(f"a benchmark process did not answer within {timeout:g} s")
    answer = control.recv()
    if isinstance(answer, RoleFailed):
        raise RuntimeError(f"a benchmark process failed:\n{answer}")
    return answer


def wait_command(control: Connection, timeout: float = ANSWER_TIMEOUT) -> Any:
    """In a role: the benchmark's next command, within `timeout` seconds."""
    if not control.poll(timeout):
        raise TimeoutError(f"the benchmark sent no command within {timeout:g} s")
    return control.recv()
