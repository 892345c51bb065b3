"""A node's UDP sockets, which carry its heartbeat and probe datagrams: sending (past a refusal an
earlier datagram caused), reading what they hold with the kernel's arrival times, and the
refusals ("port unreachable") their datagrams met, each reported with the address it concerns.

No task waits on these sockets' FDs: the heartbeat loop and the judge read them when they wake
(`receive`), and sends go out from any task.
"""

from __future__ import annotations

import socket as stdlib_socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import trio

from discovery import PeerRecord

from . import _wire
from ._addresses import Addresses
from ._beatkeys import MAC_SIZE
from ._ratelimit import RateLimitedLog

# One byte more than a datagram (and its MAC) may hold, to tell an oversized one.
_DATAGRAM_BUFFER: Final = _wire.MAX_DATAGRAM_SIZE + MAC_SIZE + 1
# Kernel receive times of datagrams (Linux; elsewhere the time of reading stands in): the round
# trip then leaves out how long a datagram waited to be read. Python does not name the option.
SO_TIMESTAMPNS: Final = getattr(stdlib_socket, "SO_TIMESTAMPNS", 35)
# Linux queues the ICMP errors a UDP socket's datagrams caused, each with the address it concerns
# (`MSG_ERRQUEUE`), when these are set: `sock_extended_err` says which error.
IP_RECVERR: Final = getattr(stdlib_socket, "IP_RECVERR", 11)
IPV6_RECVERR: Final = getattr(stdlib_socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE: Final = getattr(stdlib_socket, "MSG_ERRQUEUE", 0x2000)
_EXTENDED_ERROR: Final = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data
_PORT_UNREACHABLE: Final = {(2, 3, 3), (3, 1, 4)}  # (origin, type, code): ICMP, ICMPv6
_ERROR_MESSAGES: Final = {
    (stdlib_socket.SOL_IP, IP_RECVERR),
    (stdlib_socket.IPPROTO_IPV6, IPV6_RECVERR),
}
_ERROR_SPACE: Final = stdlib_socket.CMSG_SPACE(_EXTENDED_ERROR.size + 32)
_TIMESPEC: Final = struct.Struct("@ll")
_STAMP_SPACE: Final = stdlib_socket.CMSG_SPACE(_TIMESPEC.size)

#: Where a datagram goes: the UDP socket that reaches the host, and the (host, port).
Route = tuple[stdlib_socket.socket, tuple[str, int]]


class DatagramSockets:
    """The node's UDP sockets, one per host it is bound on (the module's rules). `refused(host,
    port, now)` is told each "port unreachable" a datagram met."""

    def __init__(
        self,
        socks: list[stdlib_socket.socket],
        addresses: Addresses,
        *,
        receive_batch: int,
        bytes_in: dict[str, int],
        log: RateLimitedLog,
        refused: Callable[[str, int, float], None],
    ) -> None:
        self.socks = socks
        self._addresses = addresses
        self._receive_batch = receive_batch
        self._bytes_in = bytes_in
        self._log = log
        self._refused = refused
        self.bytes_sent = 0

    def route(self, record: PeerRecord) -> Route | None:
        """The UDP socket of this node that sends to `record`'s inbox port, and where to; None
        if this node has none of that address family."""
        host = self._addresses.host(record)
        index = self._addresses.sender(host)
        return None if index is None else (self.socks[index], (host, record.pull_port))

    def send(self, route: Route, datagram: bytes, now: float, what: str) -> None:
        """Send `datagram` (a `what`, for the log) on `route`. A send that fails (a full
        buffer, an unreachable network) costs that datagram, logged at a bounded rate."""
        sock, destination = route
        try:
            try:
                sock.sendto(datagram, destination)
            except ConnectionRefusedError:
                # An earlier datagram's refusal (queued with `IP_RECVERR`), which Linux reports
                # on the socket's next send, wherever it goes: take it, send again.
                self.take_refusals(sock, now)
                sock.sendto(datagram, destination)
            self.bytes_sent += len(datagram)
        except OSError as exc:  # BlockingIOError (buffer full) included
            self._log.warning(
                "datagram-send", now, "dropped a %s datagram to %s: %s", what, destination[0], exc
            )

    def receive(self) -> Iterator[tuple[bytes, float, str]]:
        """Every datagram the sockets hold (at most `receive_batch` each), with when the kernel
        took it in (on trio's clock) and the host it came from."""
        batch = self._receive_batch
        # Kernel arrival times are wall-clock times: this is what turns them into this clock's.
        now = trio.current_time()
        wall_offset = time.time() - now
        for sock in self.socks:
            self.take_refusals(sock, now)
            for _ in range(batch):
                try:
                    datagram, ancillary, _, source = sock.recvmsg(_DATAGRAM_BUFFER, _STAMP_SPACE)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:  # an ICMP error, queued: taken below
                    self.take_refusals(sock, now)
                    continue
                except OSError as exc:  # an ICMP error reported late, say: not this node's fault
                    self._log.warning("datagram-receive", now, "heartbeat socket: %s", exc)
                    break
                self._bytes_in["udp"] += len(datagram)
                yield datagram, arrival_time(ancillary, wall_offset, now), source[0]

    def take_refusals(self, sock: stdlib_socket.socket, now: float) -> None:
        """Take the ICMP errors queued for `sock`'s datagrams (Linux): each "port unreachable"
        goes to `refused` with the address it concerns; other errors are let go."""
        for _ in range(self._receive_batch):
            try:
                _, ancillary, _, destination = sock.recvmsg(1, _ERROR_SPACE, _MSG_ERRQUEUE)
            except OSError:  # nothing queued (or no error queue here)
                return
            for level, kind, data in ancillary:
                if (level, kind) not in _ERROR_MESSAGES or len(data) < _EXTENDED_ERROR.size:
                    continue
                _, origin, icmp_type, code, *_ = _EXTENDED_ERROR.unpack_from(data)
                if (origin, icmp_type, code) in _PORT_UNREACHABLE:
                    self._refused(destination[0].partition("%")[0], destination[1], now)

    def close(self) -> None:
        close_datagrams(self.socks)


def arrival_time(ancillary: list[tuple[int, int, bytes]], wall_offset: float, now: float) -> float:
    """When a datagram arrived, on this node's clock: the kernel's stamp (wall-clock time, less
    `wall_offset`) if there is a plausible one, else `now`."""
    for level, kind, data in ancillary:
        if (
            level == stdlib_socket.SOL_SOCKET
            and kind == SO_TIMESTAMPNS
            and len(data) >= _TIMESPEC.size
        ):
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            arrival: float = seconds + nanoseconds * 1e-9 - wall_offset
            if now - 1.0 < arrival <= now:  # a wall clock stepped meanwhile would be way off
                return arrival
    return now


def close_datagrams(socks: Iterable[stdlib_socket.socket]) -> None:
    """Close UDP sockets (a task waiting on one gets `trio.ClosedResourceError`)."""
    for sock in socks:
        trio.lowlevel.notify_closing(sock)
        sock.close()
