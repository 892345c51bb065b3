"""What a node counts for its operators, and the Prometheus text that shows it. Pure: no IO,
no clock (the node passes the times it measures).

* `Histogram`: a snapshot of observations in fixed buckets (non-cumulative counts, the last for
  everything above the highest bound), made by a `Tally` that the node feeds.
* `ServiceStatistics` and `PeerStatistics`: rows of the per-service and per-peer tables of
  `NodeStatistics`. Both tables have keys that come from the network (a peer names the service
  of a task it sends; peers come and go), so both are capped: past `MAX_SERVICES` services (or
  `MAX_PEERS` peers) the rest are counted together under the key `OTHER` (the empty string,
  which is no service name a node accepts, and no peer id).
* `format_metrics`: `NodeStatistics` in, the Prometheus text exposition format (version 0.0.4)
  out. Every label value is escaped: a service name from a peer is untrusted text.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._types import NodeStatistics

#: Upper bounds (seconds) of the ack latency buckets: from a loopback round trip (about 0.3 ms)
#: up to tasks that take seconds of work.
ACK_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Upper bounds (seconds) of the heartbeat round-trip buckets: loopback to a slow WAN link.
RTT_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
#: Most services with a row of their own in `NodeStatistics.services`; the rest share `OTHER`.
MAX_SERVICES: Final = 128
#: Most peers with a row of their own in `NodeStatistics.peer_queues`; the rest share `OTHER`.
MAX_PEERS: Final = 128
#: The key of the row that counts what did not fit under the cap.
OTHER: Final = ""


@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations counted in fixed buckets. `bounds`: the buckets' upper bounds, ascending
    and finite; `counts`: how many observations fell in each (a value equal to a bound counts
    in that bucket), one more than there are bounds, the last for values above every bound;
    `sum`: the sum of the observations. Counts are per bucket, not cumulative: `cumulative()`
    gives them as Prometheus exports them."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float = 0.0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a histogram has one count more than it has bounds")
        if any(not math.isfinite(bound) for bound in self.bounds):
            raise ValueError("histogram bounds must be finite")
        if any(b >= a for a, b in zip(self.bounds[1:], self.bounds, strict=False)):
            raise ValueError("histogram bounds must be strictly ascending")

    @classmethod
    def empty(cls, bounds: Sequence[float]) -> Histogram:
        """A histogram of no observations, in buckets with these upper bounds."""
        return cls(tuple(bounds), (0,) * (len(bounds) + 1))

    @property
    def count(self) -> int:
        """How many observations in all."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) for each bucket, +inf last."""
        result = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            result.append((bound, total))
        return result


class Tally:
    """The running counts behind a `Histogram`: `observe` values, take a `snapshot`."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        Histogram.empty(bounds)  # (checks them)
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (NaN is ignored: it belongs to no bucket)."""
        if value == value:
            self._counts[bisect_left(self._bounds, value)] += 1
            self._sum += value

    def snapshot(self) -> Histogram:
        return Histogram(self._bounds, tuple(self._counts), self._sum)


@dataclass(frozen=True, slots=True)
class ServiceStatistics:
    """One service's task counters at a node. As a producer: `pushed` (first sends),
    `acked`, `nacked`, `redelivered` (sent again after a nack, a worker's death or an ack
    deadline), `given_up` (after `Settings.max_attempts`). As a worker: `received` (tasks that
    came, duplicates and ones for services not offered here included), `done` (tasks that left
    this worker's hands: acked, nacked, or handed back by `drain`)."""

    pushed: int = 0
    acked: int = 0
    nacked: int = 0
    redelivered: int = 0
    given_up: int = 0
    received: int = 0
    done: int = 0


#: The positions of `ServiceStatistics`'s fields in the node's running rows (lists of ints).
PUSHED, ACKED, NACKED, REDELIVERED, GIVEN_UP, RECEIVED, DONE = range(7)


class ServiceCounts:
    """The running per-service table, capped at `cap` names (then `OTHER`). `row(name)` is the
    list of counters to increment (indices `PUSHED` to `DONE`): one dict look-up a task. A name
    longer than `max_name` characters (only a misbehaving peer sends one) is counted under `OTHER`
    too, so the table's memory is bounded."""

    __slots__ = ("_cap", "_max_name", "_rows")

    def __init__(self, cap: int = MAX_SERVICES, max_name: int = 255) -> None:
        self._cap = cap
        self._max_name = max_name
        self._rows: dict[str, list[int]] = {}

    def row(self, service: str) -> list[int]:
        row = self._rows.get(service)
        if row is None:
            row = self._new_row(service)
        return row

    def _new_row(self, service: str) -> list[int]:
        rows = self._rows
        named = len(rows) - (OTHER in rows)
        if named >= self._cap or not 0 < len(service) <= self._max_name:
            row = rows.get(OTHER)
            if row is None:
                row = rows[OTHER] = [0] * 7
            # The name is not remembered: the table stays at the cap however many come.
            return row
        row = rows[service] = [0] * 7
        return row

    def rows(self) -> list[list[int]]:
        """The running rows (for totals), `OTHER`'s included."""
        return list(self._rows.values())

    def snapshot(self) -> dict[str, ServiceStatistics]:
        return {name: ServiceStatistics(*row) for name, row in self._rows.items()}


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    """How much this node holds for one peer: `name` (its name, as it says), `outbox` (messages
    queued in this node for its inbox, on top of ZeroMQ's buffer), `in_flight` (this node's
    tasks it holds unacked). The `OTHER` row sums the peers past the cap (its name is empty)."""

    name: str
    outbox: int = 0
    in_flight: int = 0


def cap_peers(rows: Iterable[tuple[str, PeerStatistics]]) -> dict[str, PeerStatistics]:
    """The peer table, capped at `MAX_PEERS` rows of their own (the first ones given); the rest
    are summed under `OTHER`."""
    table: dict[str, PeerStatistics] = {}
    outbox = in_flight = 0
    extra = False
    for peer_id, row in rows:
        if len(table) < MAX_PEERS:
            table[peer_id] = row
        else:
            extra = True
            outbox += row.outbox
            in_flight += row.in_flight
    if extra:
        table[OTHER] = PeerStatistics("", outbox, in_flight)
    return table


# -- the Prometheus text format ----------------------------------------------------------------

#: The Content-Type of `format_metrics`'s text.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    """A label value as the text format writes it between quotes: backslash, double quote and
    line feed escaped. (Other characters, control characters included, are legal as they are.)"""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_number(value: float) -> str:
    """A sample value or bucket bound as the text format writes it (integers without a point,
    floats in Python's shortest round-trip form, +Inf, -Inf and NaN spelled out)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        if labels:
            inner = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels.items())
            self.lines.append(f"{name}{{{inner}}} {format_number(value)}")
        else:
            self.lines.append(f"{name} {format_number(value)}")

    def histogram(self, name: str, histogram: Histogram, labels: Mapping[str, str]) -> None:
        for bound, count in histogram.cumulative():
            self.sample(f"{name}_bucket", count, {**labels, "le": format_number(float(bound))})
        self.sample(f"{name}_sum", histogram.sum, labels)
        self.sample(f"{name}_count", histogram.count, labels)


# (statistics field, metric name, help) of the plain counters, in the order exported.
_COUNTERS: Final = (
    ("events_published", "mesh_events_published_total", "Events this node published."),
    ("events_received", "mesh_events_received_total", "Events this node received."),
    (
        "events_dropped",
        "mesh_events_dropped_total",
        "Events dropped for a subscription whose buffer was full.",
    ),
    ("tasks_pushed", "mesh_tasks_pushed_total", "Tasks pushed by this node (first sends)."),
    ("tasks_acked", "mesh_tasks_acked_total", "Tasks of this node acked by their worker."),
    ("tasks_nacked", "mesh_tasks_nacked_total", "Tasks of this node nacked by their worker."),
    (
        "tasks_redelivered",
        "mesh_tasks_redelivered_total",
        "Tasks of this node queued to be sent again.",
    ),
    (
        "tasks_given_up",
        "mesh_tasks_given_up_total",
        "Tasks of this node given up after max_attempts.",
    ),
    ("tasks_received", "mesh_tasks_received_total", "Tasks received by this node as a worker."),
    (
        "tasks_duplicate",
        "mesh_tasks_duplicate_total",
        "Tasks received again after they were done, acked without running.",
    ),
    ("acks_sent", "mesh_acks_sent_total", "Acks sent by this node as a worker."),
    ("nacks_sent", "mesh_nacks_sent_total", "Nacks sent by this node as a worker."),
    (
        "heartbeat_datagrams",
        "mesh_heartbeat_datagrams_total",
        "Valid heartbeat datagrams received by UDP.",
    ),
    (
        "probe_datagrams",
        "mesh_probe_datagrams_total",
        "SWIM probes, answers and relays received by UDP.",
    ),
    (
        "peers_refused",
        "mesh_peers_refused_total",
        "Nodes refused as peers (full, too many at once, key not allowed).",
    ),
    (
        "handshakes_refused",
        "mesh_handshakes_refused_total",
        "Connections refused: a key not allowed, or no CURVE.",
    ),
    (
        "senders_banned",
        "mesh_senders_banned_total",
        "Times a key was banned for a while for repeated bad frames.",
    ),
    (
        "subscription_floods",
        "mesh_subscription_floods_total",
        "PUB subscriber cuts for too many subscriptions.",
    ),
    ("requests_sent", "mesh_requests_sent_total", "Requests sent by this node (first sends)."),
    ("replies_received", "mesh_replies_received_total", "Replies this node's requests got."),
    (
        "requests_failed",
        "mesh_requests_failed_total",
        "Requests of this node answered by an error (RemoteError).",
    ),
    (
        "requests_timed_out",
        "mesh_requests_timed_out_total",
        "Requests of this node whose caller stopped waiting first.",
    ),
    ("replies_sent", "mesh_replies_sent_total", "Replies sent by this node, errors included."),
    (
        "requests_expired",
        "mesh_requests_expired_total",
        "Requests dropped unread here: their caller had stopped waiting.",
    ),
    (
        "events_shed",
        "mesh_events_shed_total",
        "Messages sent past subscriber connections full too long.",
    ),
    (
        "events_repaired",
        "mesh_events_repaired_total",
        "Missed events repaired from their publisher's history.",
    ),
    ("event_gaps", "mesh_event_gaps_total", "Gaps delivered: missed events not repaired."),
)

# (ServiceStatistics field, metric name, help) of the per-service counters.
_SERVICE_COUNTERS: Final = (
    ("pushed", "mesh_service_tasks_pushed_total", "Tasks pushed, by service (first sends)."),
    ("acked", "mesh_service_tasks_acked_total", "Tasks pushed and acked, by service."),
    ("nacked", "mesh_service_tasks_nacked_total", "Tasks pushed and nacked, by service."),
    (
        "redelivered",
        "mesh_service_tasks_redelivered_total",
        "Tasks pushed and queued to be sent again, by service.",
    ),
    (
        "given_up",
        "mesh_service_tasks_given_up_total",
        "Tasks pushed and given up on, by service.",
    ),
    ("received", "mesh_service_tasks_received_total", "Tasks received as a worker, by service."),
    (
        "done",
        "mesh_service_tasks_done_total",
        "Tasks that left this worker's hands, by service.",
    ),
)


def format_metrics(statistics: NodeStatistics, labels: Mapping[str, str] | None = None) -> str:
    """`statistics` in the Prometheus text exposition format (version 0.0.4), ending in a line
    feed. `labels` (such as the node's name and mesh) are added to every sample; their names
    must be valid label names (not checked: they are the caller's, never a peer's)."""
    base = dict(labels or {})
    out = _Writer()

    def sample(name: str, value: float, extra: Mapping[str, str] | None = None) -> None:
        out.sample(name, value, {**base, **extra} if extra else base)

    out.family("mesh_peers", "gauge", "Peers this node knows.")
    sample("mesh_peers", statistics.peers)
    for field_name, name, help_text in _COUNTERS:
        out.family(name, "counter", help_text)
        sample(name, getattr(statistics, field_name))
    out.family("mesh_bad_frames_total", "counter", "Frames dropped for breaking the protocol.")
    sample("mesh_bad_frames_total", statistics.bad_frames)
    out.family("mesh_bad_frame_reasons_total", "counter", "Frames dropped, by what was wrong.")
    for reason, count in sorted(statistics.bad_frame_reasons.items()):
        sample("mesh_bad_frame_reasons_total", count, {"reason": reason})
    out.family(
        "mesh_received_bytes_total", "counter", "Bytes received, by socket (frames and datagrams)."
    )
    for path, count in sorted(statistics.bytes_received.items()):
        sample("mesh_received_bytes_total", count, {"socket": path})
    out.family("mesh_sent_bytes_total", "counter", "Bytes sent, by socket (frames and datagrams).")
    for path, count in sorted(statistics.bytes_sent.items()):
        sample("mesh_sent_bytes_total", count, {"socket": path})
    out.family("mesh_tasks_in_flight", "gauge", "Tasks of this node sent and not yet settled.")
    sample("mesh_tasks_in_flight", statistics.tasks_in_flight)
    out.family("mesh_redelivery_queued", "gauge", "Tasks of this node waiting to be sent again.")
    sample("mesh_redelivery_queued", statistics.redelivery_queued)
    out.family("mesh_outbox_kept", "gauge", "Tasks kept in this node's state directory.")
    sample("mesh_outbox_kept", statistics.outbox_kept)
    out.family(
        "mesh_events_queued", "gauge", "Published messages queued in this node for the PUB socket."
    )
    sample("mesh_events_queued", statistics.events_queued)
    out.family("mesh_peer_outbox", "gauge", "Messages queued in this node for a peer's inbox.")
    peers = sorted(statistics.peer_queues.items())
    for peer_id, row in peers:
        sample("mesh_peer_outbox", row.outbox, {"peer_id": peer_id, "peer": row.name})
    out.family("mesh_peer_in_flight", "gauge", "Tasks of this node a peer holds unacked.")
    for peer_id, row in peers:
        sample("mesh_peer_in_flight", row.in_flight, {"peer_id": peer_id, "peer": row.name})
    services = sorted(statistics.services.items())
    for field_name, name, help_text in _SERVICE_COUNTERS:
        out.family(name, "counter", help_text)
        for service, counts in services:
            sample(name, getattr(counts, field_name), {"service": service})
    for name, histogram, help_text in (
        (
            "mesh_ack_latency_seconds",
            statistics.ack_latency,
            "From a task's send to its ack or nack, at the producer.",
        ),
        (
            "mesh_heartbeat_rtt_seconds",
            statistics.heartbeat_rtt,
            "Round trips to peers, measured from echoed heartbeats.",
        ),
    ):
        out.family(name, "histogram", help_text)
        out.histogram(name, histogram, base)
    return "\n".join(out.lines) + "\n"
