"""Binding: the addresses a node listens on, and its sockets bound there with one port number
per kind on every address (the inbox's TCP and the heartbeats' UDP share theirs). Errors are
raised as `ValueError` (a bad address or port) and `OSError` (an address that cannot be bound),
with the endpoint in the message."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import resource
import socket as stdlib_socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import zmq

from discovery import interface_addresses, tcp_endpoint

from . import _batches, _wire
from ._keys import KeyPair
from ._limits import Limits, limits_for
from ._members import Members
from ._types import Settings
from ._udp import IP_RECVERR, IPV6_RECVERR, SO_TIMESTAMPNS, close_datagrams
from ._zmq import ZmqSocket

logger = logging.getLogger("mesh")

#: Pass as `interface` to bind to every interface of the machine (for a real LAN; never the
#: default, and never in tests: it reaches the machine's real networks).
ALL_INTERFACES: Final = "*"


def check_interfaces(interface: str | Iterable[str]) -> list[str]:
    """The canonical addresses to bind to: one, a list, or `ALL_INTERFACES`."""
    if interface == ALL_INTERFACES:
        hosts = interface_addresses()
        if not hosts:
            raise ValueError("this machine has no network interface with an IPv4 address")
        return hosts
    given = [interface] if isinstance(interface, str) else list(interface)
    if not given:
        raise ValueError("give at least one interface address")
    hosts = []
    for text in given:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"interface {text!r} is not an IP address") from None
        if ip.is_unspecified:
            raise ValueError(
                f"a node binds to interface addresses, not to {ip}: give the addresses "
                f"(say 127.0.0.1 or a LAN address), or {ALL_INTERFACES!r} for all of them"
            )
        if str(ip) not in hosts:
            hosts.append(str(ip))
    return hosts


def check_discovery(discovery: str | Iterable[str], hosts: Sequence[str]) -> set[str]:
    """The discovery methods asked for (``"mdns"``, ``"static"``), checked against `hosts`."""
    methods = {discovery} if isinstance(discovery, str) else set(discovery)
    if not methods or not methods <= {"mdns", "static"}:
        raise ValueError(f"discovery must be 'mdns', 'static' or both, not {discovery!r}")
    ips = [ipaddress.ip_address(host) for host in hosts]
    if (
        "mdns" in methods
        and all(ip.is_loopback for ip in ips)
        and any(ip.version == 6 for ip in ips)
    ):
        raise ValueError(
            "mDNS does not work on the IPv6 loopback (python-zeroconf cannot use ::1): "
            "use discovery='static' there, or an IPv4 or LAN address"
        )
    return methods


def check_keyed(hosts: Sequence[str], key: KeyPair | None, allow: object, insecure: bool) -> None:
    """Refuse an open node (no key) on any address but loopback, unless `insecure`, which is
    then logged as a warning; and an allow list without a key."""
    if key is None:
        if allow not in ((), None):
            raise ValueError("an allow list needs a key: give key= (or --key) too")
        exposed = [host for host in hosts if not ipaddress.ip_address(host).is_loopback]
        if exposed and not insecure:
            raise ValueError(
                f"refusing to run open (no key) on {', '.join(exposed)}: anyone who can reach "
                "it could join the mesh. Make keys with 'mesh-cli keygen PATH' and pass "
                "key=/--key (and allow=/--allow), or insecure=True/--insecure to run open anyway"
            )
        if exposed:
            logger.warning(
                "running open (no key) on %s: anyone who can reach it can join the mesh, "
                "take its tasks and read its events",
                ", ".join(exposed),
            )
    elif insecure:
        raise ValueError("insecure asks to run open, but a key was given: give one or the other")


def open_context(max_peers: int) -> tuple[zmq.Context[Any], Limits]:
    """A ZeroMQ context for one node, and the node's limits (`mesh/_limits.py`). The process's
    soft limit of file descriptors is raised to its hard limit first, the most it may have
    without privileges, and the context may make as many sockets as the limits allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: keep the soft limit
            pass
    descriptors = _MANY_DESCRIPTORS if soft == resource.RLIM_INFINITY else soft
    limits = limits_for(descriptors, max_peers)
    context: zmq.Context[Any] = zmq.Context()
    context.set(zmq.MAX_SOCKETS, limits.sockets)
    return context, limits


_BOUND_KINDS: Final = frozenset({zmq.XPUB, zmq.PULL})
#: Bytes a CurveZMQ MESSAGE command adds to a frame: its name (8), nonce (8), MAC (16) and
#: flags (1).
CURVE_OVERHEAD: Final = 33

# What an unlimited number of file descriptors counts as.
_MANY_DESCRIPTORS: Final = 1 << 20


def socket_maker(
    context: zmq.Context[Any], members: Members | None
) -> Callable[[int, bool], ZmqSocket]:
    """What makes a node's ZeroMQ sockets in `context`: ``make(kind, ipv6)``. Each lingers not
    at all unless told when it is closed (only the goodbyes are given time). With `members`
    (a keyed node), each speaks CurveZMQ: the bound kinds (PUB, PULL) as servers, the
    connecting ones (PUSH, SUB) as clients."""

    def make(kind: int, ipv6: bool) -> ZmqSocket:
        sock: ZmqSocket = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        if members is not None:
            if kind in _BOUND_KINDS:
                members.secure_server(sock)
            else:
                members.secure_client(sock)
        return sock

    return make


def bind(sock: ZmqSocket, hosts: Sequence[str], port: int) -> int:
    """Bind `sock` on every host with one port number (`port`, or one free on all of them)."""
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} out of range")
    for _attempt in range(20 if port == 0 else 1):
        bound: list[str] = []
        try:
            first = _bind_one(sock, hosts[0], port)
            bound.append(tcp_endpoint(hosts[0], first))
            for host in hosts[1:]:
                _bind_one(sock, host, first)
                bound.append(tcp_endpoint(host, first))
            return first
        except OSError:
            for endpoint in bound:
                sock.unbind(endpoint)
            if port != 0 or not bound:
                raise
    raise OSError(f"found no port free on all of {', '.join(hosts)}")


def _bind_one(sock: ZmqSocket, host: str, port: int) -> int:
    bracketed = f"[{host}]" if ":" in host else host
    endpoint = f"tcp://{bracketed}:{port or '*'}"
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise OSError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from exc
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(last, bytes)
    return int(last.rsplit(b":", 1)[1])


def bind_inbox(
    sock: ZmqSocket, hosts: Sequence[str], port: int
) -> tuple[int, list[stdlib_socket.socket]]:
    """Bind the inbox (PULL) on every host, and a UDP socket (for heartbeat datagrams) on each
    at the same port number: `port`, or one free for both on all of them. Raises `OSError`."""
    for _attempt in range(20 if port == 0 else 1):
        actual = bind(sock, hosts, port)
        try:
            return actual, _bind_datagrams(hosts, actual)
        except OSError:
            for host in hosts:
                sock.unbind(tcp_endpoint(host, actual))
            if port != 0:
                raise
    raise OSError(f"found no port free for both TCP and UDP on all of {', '.join(hosts)}")


def _bind_datagrams(hosts: Sequence[str], port: int) -> list[stdlib_socket.socket]:
    """A non-blocking UDP socket bound to (host, port) for each host; all or none."""
    made: list[stdlib_socket.socket] = []
    try:
        for host in hosts:
            family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
            sock = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM)
            made.append(sock)
            sock.setblocking(False)
            if sys.platform == "linux":
                with contextlib.suppress(OSError):
                    sock.setsockopt(stdlib_socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                # ICMP errors for what it sends, queued with the address they concern: a peer's
                # heartbeat port that answers "port unreachable" (`Heartbeats`).
                with contextlib.suppress(OSError):
                    if family == stdlib_socket.AF_INET:
                        sock.setsockopt(stdlib_socket.SOL_IP, IP_RECVERR, 1)
                    else:
                        sock.setsockopt(stdlib_socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                bracketed = f"[{host}]" if ":" in host else host
                message = f"cannot bind udp://{bracketed}:{port}: {exc.strerror}"
                raise OSError(exc.errno, message) from exc
        return made
    except BaseException:
        close_datagrams(made)
        raise


@dataclass(frozen=True, slots=True)
class NodeSockets:
    """A node's bound sockets: PUB (an XPUB), PULL (the inbox) and the UDP sockets at its port
    number, and its two SUBs (events and control), not yet connected anywhere."""

    pub: ZmqSocket
    pull: ZmqSocket
    sub: ZmqSocket
    control: ZmqSocket
    datagrams: list[stdlib_socket.socket]
    pub_port: int
    pull_port: int


def event_hwm(settings: Settings) -> int:
    """The high-water mark of the PUB and the events SUB: `Settings.event_hwm` frames, and no
    more than `Settings.event_buffer_bytes` of frames of events as large as a batch gets."""
    return min(settings.event_hwm, settings.event_buffer_bytes // _batches.PUBLISHED_BATCH_BYTES)


def bind_sockets(
    make_socket: Callable[[int, bool], ZmqSocket],
    hosts: Sequence[str],
    pub_port: int,
    pull_port: int,
    settings: Settings,
    *,
    keyed: bool = False,
) -> NodeSockets:
    """Make a node's sockets with `make_socket(kind, ipv6)` and bind them on every host (ports:
    the given ones, or free ones). Raises `OSError` when an address cannot be bound; the ZeroMQ
    sockets made so far are left to their context."""
    ipv6 = any(":" in host for host in hosts)
    # ZeroMQ checks the size of a frame as it arrives, which under CurveZMQ is the encrypted
    # MESSAGE command: the frame and `CURVE_OVERHEAD`.
    most = _wire.MAX_FRAME_SIZE + (CURVE_OVERHEAD if keyed else 0)
    # XPUB rather than PUB for XPUB_NODROP: a full subscriber pipe makes sends fail (so the
    # publisher waits) instead of dropping events. Plain SUB sockets talk to it unchanged.
    pub = make_socket(zmq.XPUB, ipv6)
    pub.setsockopt(zmq.SNDHWM, event_hwm(settings))
    pub.setsockopt(zmq.XPUB_NODROP, int(settings.event_backpressure))
    # No ZMTP heartbeats here: a subscriber that is only slow stops reading its TCP
    # connection once its pipe is full, so it would miss the PINGs too, and the heartbeat
    # would cut it off, losing its queued events (measured; docs/decisions.md).
    pull = make_socket(zmq.PULL, ipv6)
    pull.setsockopt(zmq.MAXMSGSIZE, most)
    pull.setsockopt(zmq.RCVHWM, max(1000, settings.receive_batch))
    # Two SUB sockets, both connected to every peer's PUB: events, which a slow reader may
    # hold back (backpressure), and control, which nothing may hold back.
    sub = make_socket(zmq.SUB, ipv6)
    sub.setsockopt(zmq.MAXMSGSIZE, most)
    sub.setsockopt(zmq.RCVHWM, event_hwm(settings))
    control = make_socket(zmq.SUB, ipv6)
    control.setsockopt(zmq.MAXMSGSIZE, most)
    control.setsockopt(zmq.SUBSCRIBE, _wire.CONTROL_CHANNEL)
    actual_pub = bind(pub, hosts, pub_port)
    actual_pull, datagrams = bind_inbox(pull, hosts, pull_port)
    return NodeSockets(pub, pull, sub, control, datagrams, actual_pub, actual_pull)
