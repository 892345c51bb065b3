"""The metrics' pure parts: histograms, the capped tables, and the Prometheus text (exact)."""

from __future__ import annotations

import math

import pytest

from mesh import Histogram, NodeStatistics, PeerStatistics, ServiceStatistics, format_metrics
from mesh._metrics import (
    ACKED,
    MAX_PEERS,
    OTHER,
    PUSHED,
    RECEIVED,
    ServiceCounts,
    Tally,
    cap_peers,
    escape_label,
    format_number,
)


def test_a_tally_counts_each_value_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    tally = Tally((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0, math.nan):
        tally.observe(value)
    histogram = tally.snapshot()
    assert histogram.counts == (2, 2, 1)  # 0.1 and 1.0 count in their own bucket; NaN nowhere
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(8.65)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    tally.observe(0.0)
    assert histogram.counts == (2, 2, 1)  # a snapshot does not change afterwards


def test_histograms_refuse_bad_bounds_and_counts() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram.empty((1.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        Tally((1.0, math.inf))
    with pytest.raises(ValueError, match="one count more"):
        Histogram((1.0,), (0,))
    assert Histogram.empty((1.0, 2.0)) == Histogram((1.0, 2.0), (0, 0, 0), 0.0)


def test_the_service_table_is_capped_and_the_rest_is_counted_under_other() -> None:
    services = ServiceCounts(cap=2, max_name=10)
    services.row("a")[PUSHED] += 1
    services.row("b")[PUSHED] += 1
    for name in ("c", "d", "", "x" * 11):  # past the cap, the empty name, too long a name
        services.row(name)[RECEIVED] += 1
    services.row("a")[ACKED] += 1
    table = services.snapshot()
    assert table == {
        "a": ServiceStatistics(pushed=1, acked=1),
        "b": ServiceStatistics(pushed=1),
        OTHER: ServiceStatistics(received=4),
    }
    for i in range(1000):  # a hostile peer's stream of names grows nothing
        services.row(f"s{i}")[RECEIVED] += 1
    assert len(services.snapshot()) == 3


def test_the_peer_table_is_capped_and_the_rest_summed_under_other() -> None:
    rows = [(f"{i:032x}", PeerStatistics(f"p{i}", 1, 2)) for i in range(MAX_PEERS + 3)]
    table = cap_peers(rows)
    assert len(table) == MAX_PEERS + 1
    assert table[OTHER] == PeerStatistics("", 3, 6)
    assert OTHER not in cap_peers(rows[:MAX_PEERS])


def test_label_values_and_numbers_are_written_as_the_text_format_wants() -> None:
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert format_number(3) == "3"
    assert format_number(2.0) == "2"
    assert format_number(0.0005) == "0.0005"
    assert format_number(math.inf) == "+Inf"
    assert format_number(-math.inf) == "-Inf"
    assert format_number(math.nan) == "NaN"


def test_statistics_format_exactly() -> None:
    stats = NodeStatistics(
        peers=2,
        events_published=1,
        events_received=2,
        events_dropped=0,
        tasks_pushed=5,
        tasks_acked=3,
        tasks_nacked=1,
        tasks_in_flight=1,
        tasks_received=4,
        tasks_redelivered=1,
        tasks_given_up=0,
        tasks_duplicate=0,
        acks_sent=4,
        nacks_sent=0,
        heartbeat_datagrams=9,
        peers_refused=3,
        bad_frames=2,
        bad_frame_reasons={"truncated": 2},
        bytes_received={"inbox": 100, "udp": 20},
        bytes_sent={"push": 300},
        events_queued=0,
        redelivery_queued=1,
        peer_queues={"ab" * 16: PeerStatistics('w"1', 2, 1)},
        ack_latency=Histogram((0.001, 0.5), (1, 2, 1), 2.25),
        heartbeat_rtt=Histogram((0.001,), (0, 0), 0.0),
        services={
            "jobs": ServiceStatistics(5, 3, 1, 1, 0, 0, 0),
            'evil"\\\n': ServiceStatistics(received=4, done=4),
            "": ServiceStatistics(received=1),
        },
    )
    assert format_metrics(stats, {"node": "n\\1"}) == EXPECTED


def test_the_defaults_of_the_new_fields_format_too() -> None:
    stats = NodeStatistics(*(0,) * 16)
    text = format_metrics(stats)
    assert "mesh_tasks_pushed_total 0\n" in text
    assert 'mesh_ack_latency_seconds_bucket{le="+Inf"} 0\n' in text
    assert text.endswith("mesh_heartbeat_rtt_seconds_count 0\n")


EXPECTED = r"""# HELP mesh_peers Peers this node knows.
# TYPE mesh_peers gauge
mesh_peers{node="n\\1"} 2
# HELP mesh_events_published_total Events this node published.
# TYPE mesh_events_published_total counter
mesh_events_published_total{node="n\\1"} 1
# HELP mesh_events_received_total Events this node received.
# TYPE mesh_events_received_total counter
mesh_events_received_total{node="n\\1"} 2
# HELP mesh_events_dropped_total Events dropped for a subscription whose buffer was full.
# TYPE mesh_events_dropped_total counter
mesh_events_dropped_total{node="n\\1"} 0
# HELP mesh_tasks_pushed_total Tasks pushed by this node (first sends).
# TYPE mesh_tasks_pushed_total counter
mesh_tasks_pushed_total{node="n\\1"} 5
# HELP mesh_tasks_acked_total Tasks of this node acked by their worker.
# TYPE mesh_tasks_acked_total counter
mesh_tasks_acked_total{node="n\\1"} 3
# HELP mesh_tasks_nacked_total Tasks of this node nacked by their worker.
# TYPE mesh_tasks_nacked_total counter
mesh_tasks_nacked_total{node="n\\1"} 1
# HELP mesh_tasks_redelivered_total Tasks of this node queued to be sent again.
# TYPE mesh_tasks_redelivered_total counter
mesh_tasks_redelivered_total{node="n\\1"} 1
# HELP mesh_tasks_given_up_total Tasks of this node given up after max_attempts.
# TYPE mesh_tasks_given_up_total counter
mesh_tasks_given_up_total{node="n\\1"} 0
# HELP mesh_tasks_received_total Tasks received by this node as a worker.
# TYPE mesh_tasks_received_total counter
mesh_tasks_received_total{node="n\\1"} 4
# HELP mesh_tasks_duplicate_total Tasks received again after they were done, acked without running.
# TYPE mesh_tasks_duplicate_total counter
mesh_tasks_duplicate_total{node="n\\1"} 0
# HELP mesh_acks_sent_total Acks sent by this node as a worker.
# TYPE mesh_acks_sent_total counter
mesh_acks_sent_total{node="n\\1"} 4
# HELP mesh_nacks_sent_total Nacks sent by this node as a worker.
# TYPE mesh_nacks_sent_total counter
mesh_nacks_sent_total{node="n\\1"} 0
# HELP mesh_heartbeat_datagrams_total Valid heartbeat datagrams received by UDP.
# TYPE mesh_heartbeat_datagrams_total counter
mesh_heartbeat_datagrams_total{node="n\\1"} 9
# HELP mesh_probe_datagrams_total SWIM probes, answers and relays received by UDP.
# TYPE mesh_probe_datagrams_total counter
mesh_probe_datagrams_total{node="n\\1"} 0
# HELP mesh_peers_refused_total Nodes refused as peers (full, too many at once, key not allowed).
# TYPE mesh_peers_refused_total counter
mesh_peers_refused_total{node="n\\1"} 3
# HELP mesh_handshakes_refused_total Connections refused: a key not allowed, or no CURVE.
# TYPE mesh_handshakes_refused_total counter
mesh_handshakes_refused_total{node="n\\1"} 0
# HELP mesh_senders_banned_total Times a key was banned for a while for repeated bad frames.
# TYPE mesh_senders_banned_total counter
mesh_senders_banned_total{node="n\\1"} 0
# HELP mesh_subscription_floods_total PUB subscriber cuts for too many subscriptions.
# TYPE mesh_subscription_floods_total counter
mesh_subscription_floods_total{node="n\\1"} 0
# HELP mesh_requests_sent_total Requests sent by this node (first sends).
# TYPE mesh_requests_sent_total counter
mesh_requests_sent_total{node="n\\1"} 0
# HELP mesh_replies_received_total Replies this node's requests got.
# TYPE mesh_replies_received_total counter
mesh_replies_received_total{node="n\\1"} 0
# HELP mesh_requests_failed_total Requests of this node answered by an error (RemoteError).
# TYPE mesh_requests_failed_total counter
mesh_requests_failed_total{node="n\\1"} 0
# HELP mesh_requests_timed_out_total Requests of this node whose caller stopped waiting first.
# TYPE mesh_requests_timed_out_total counter
mesh_requests_timed_out_total{node="n\\1"} 0
# HELP mesh_replies_sent_total Replies sent by this node, errors included.
# TYPE mesh_replies_sent_total counter
mesh_replies_sent_total{node="n\\1"} 0
# HELP mesh_requests_expired_total Requests dropped unread here: their caller had stopped waiting.
# TYPE mesh_requests_expired_total counter
mesh_requests_expired_total{node="n\\1"} 0
# HELP mesh_events_shed_total Messages sent past subscriber connections full too long.
# TYPE mesh_events_shed_total counter
mesh_events_shed_total{node="n\\1"} 0
# HELP mesh_events_repaired_total Missed events repaired from their publisher's history.
# TYPE mesh_events_repaired_total counter
mesh_events_repaired_total{node="n\\1"} 0
# HELP mesh_event_gaps_total Gaps delivered: missed events not repaired.
# TYPE mesh_event_gaps_total counter
mesh_event_gaps_total{node="n\\1"} 0
# HELP mesh_bad_frames_total Frames dropped for breaking the protocol.
# TYPE mesh_bad_frames_total counter
mesh_bad_frames_total{node="n\\1"} 2
# HELP mesh_bad_frame_reasons_total Frames dropped, by what was wrong.
# TYPE mesh_bad_frame_reasons_total counter
mesh_bad_frame_reasons_total{node="n\\1",reason="truncated"} 2
# HELP mesh_received_bytes_total Bytes received, by socket (frames and datagrams).
# TYPE mesh_received_bytes_total counter
mesh_received_bytes_total{node="n\\1",socket="inbox"} 100
mesh_received_bytes_total{node="n\\1",socket="udp"} 20
# HELP mesh_sent_bytes_total Bytes sent, by socket (frames and datagrams).
# TYPE mesh_sent_bytes_total counter
mesh_sent_bytes_total{node="n\\1",socket="push"} 300
# HELP mesh_tasks_in_flight Tasks of this node sent and not yet settled.
# TYPE mesh_tasks_in_flight gauge
mesh_tasks_in_flight{node="n\\1"} 1
# HELP mesh_redelivery_queued Tasks of this node waiting to be sent again.
# TYPE mesh_redelivery_queued gauge
mesh_redelivery_queued{node="n\\1"} 1
# HELP mesh_outbox_kept Tasks kept in this node's state directory.
# TYPE mesh_outbox_kept gauge
mesh_outbox_kept{node="n\\1"} 0
# HELP mesh_events_queued Published messages queued in this node for the PUB socket.
# TYPE mesh_events_queued gauge
mesh_events_queued{node="n\\1"} 0
# HELP mesh_peer_outbox Messages queued in this node for a peer's inbox.
# TYPE mesh_peer_outbox gauge
mesh_peer_outbox{node="n\\1",peer_id="abababababababababababababababab",peer="w\"1"} 2
# HELP mesh_peer_in_flight Tasks of this node a peer holds unacked.
# TYPE mesh_peer_in_flight gauge
mesh_peer_in_flight{node="n\\1",peer_id="abababababababababababababababab",peer="w\"1"} 1
# HELP mesh_service_tasks_pushed_total Tasks pushed, by service (first sends).
# TYPE mesh_service_tasks_pushed_total counter
mesh_service_tasks_pushed_total{node="n\\1",service=""} 0
mesh_service_tasks_pushed_total{node="n\\1",service="evil\"\\\n"} 0
mesh_service_tasks_pushed_total{node="n\\1",service="jobs"} 5
# HELP mesh_service_tasks_acked_total Tasks pushed and acked, by service.
# TYPE mesh_service_tasks_acked_total counter
mesh_service_tasks_acked_total{node="n\\1",service=""} 0
mesh_service_tasks_acked_total{node="n\\1",service="evil\"\\\n"} 0
mesh_service_tasks_acked_total{node="n\\1",service="jobs"} 3
# HELP mesh_service_tasks_nacked_total Tasks pushed and nacked, by service.
# TYPE mesh_service_tasks_nacked_total counter
mesh_service_tasks_nacked_total{node="n\\1",service=""} 0
mesh_service_tasks_nacked_total{node="n\\1",service="evil\"\\\n"} 0
mesh_service_tasks_nacked_total{node="n\\1",service="jobs"} 1
# HELP mesh_service_tasks_redelivered_total Tasks pushed and queued to be sent again, by service.
# TYPE mesh_service_tasks_redelivered_total counter
mesh_service_tasks_redelivered_total{node="n\\1",service=""} 0
mesh_service_tasks_redelivered_total{node="n\\1",service="evil\"\\\n"} 0
mesh_service_tasks_redelivered_total{node="n\\1",service="jobs"} 1
# HELP mesh_service_tasks_given_up_total Tasks pushed and given up on, by service.
# TYPE mesh_service_tasks_given_up_total counter
mesh_service_tasks_given_up_total{node="n\\1",service=""} 0
mesh_service_tasks_given_up_total{node="n\\1",service="evil\"\\\n"} 0
mesh_service_tasks_given_up_total{node="n\\1",service="jobs"} 0
# HELP mesh_service_tasks_received_total Tasks received as a worker, by service.
# TYPE mesh_service_tasks_received_total counter
mesh_service_tasks_received_total{node="n\\1",service=""} 1
mesh_service_tasks_received_total{node="n\\1",service="evil\"\\\n"} 4
mesh_service_tasks_received_total{node="n\\1",service="jobs"} 0
# HELP mesh_service_tasks_done_total Tasks that left this worker's hands, by service.
# TYPE mesh_service_tasks_done_total counter
mesh_service_tasks_done_total{node="n\\1",service=""} 0
mesh_service_tasks_done_total{node="n\\1",service="evil\"\\\n"} 4
mesh_service_tasks_done_total{node="n\\1",service="jobs"} 0
# HELP mesh_ack_latency_seconds From a task's send to its ack or nack, at the producer.
# TYPE mesh_ack_latency_seconds histogram
mesh_ack_latency_seconds_bucket{node="n\\1",le="0.001"} 1
mesh_ack_latency_seconds_bucket{node="n\\1",le="0.5"} 3
mesh_ack_latency_seconds_bucket{node="n\\1",le="+Inf"} 4
mesh_ack_latency_seconds_sum{node="n\\1"} 2.25
mesh_ack_latency_seconds_count{node="n\\1"} 4
# HELP mesh_heartbeat_rtt_seconds Round trips to peers, measured from echoed heartbeats.
# TYPE mesh_heartbeat_rtt_seconds histogram
mesh_heartbeat_rtt_seconds_bucket{node="n\\1",le="0.001"} 0
mesh_heartbeat_rtt_seconds_bucket{node="n\\1",le="+Inf"} 0
mesh_heartbeat_rtt_seconds_sum{node="n\\1"} 0
mesh_heartbeat_rtt_seconds_count{node="n\\1"} 0
"""
