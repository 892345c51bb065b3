"""The durable outbox: the tasks a node pushed and has not seen settled, kept in its state
directory, so that a node restarted on the same directory sends them again.

Rules:

* A state directory belongs to one process at a time: `StateDirectory.open` takes an exclusive
  lock (``flock``) on ``PATH/lock`` for as long as the node runs, and a second opener gets
  `StateDirectoryInUseError` at once.
* The outbox is an append-only log, ``PATH/outbox.log``, of records. A record is its payload's
  length (4 bytes, big-endian), the payload's CRC-32 (4 bytes), then the payload, a msgpack array:
  ``[1, task_id, service, body]`` for a task pushed, ``[2, task_id]`` for a task settled (acked,
  or given up).
* A task's record is written before the task is sent, by one ``write(2)``: once `push` returns,
  the task is in the kernel's hands and survives the process being killed. There is no
  ``fsync`` per task (it would cost milliseconds each), so a power cut can lose the last ones.
* Settled records are buffered and written with the next task's record, or by `flush` (the node
  calls it a few times a second): a crash can lose some, and those tasks are sent again (at least
  once, as everywhere in the mesh).
* Reading the log back (`read_log`, pure) takes records in order until the end, or until a
  record that is cut short or fails its CRC (a write torn by a crash): the rest is dropped. The
  tasks without a settled record are the outbox.
* When the log has grown past `COMPACT_BYTES` and settled tasks make most of it, it is rewritten
  with the live tasks only (a new file, synced, renamed over the old one). On opening, the log is
  always rewritten that way, the tasks renumbered from 1: a restarted node numbers its tasks
  anew.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ._errors import StateDirectoryInUseError

_HEAD: Final = struct.Struct(">II")  # length, CRC-32 of the payload
_TASK: Final = 1
_SETTLED: Final = 2
#: A record longer than this is not one this node wrote: the log ends there.
MAX_RECORD: Final = 17 * 1024 * 1024
#: The log is compacted once it is this large and settled tasks make three quarters of it.
COMPACT_BYTES: Final = 64 * 1024 * 1024
#: Settled records buffered before they are written on their own.
SETTLED_BUFFERED: Final = 256

LOG_NAME: Final = "outbox.log"
LOCK_NAME: Final = "lock"


@dataclass(frozen=True, slots=True)
class LoggedTask:
    """A task read back from the log: pushed, not settled."""

    task_id: int
    service: str
    body: Any


# -- the log's records, pure -----------------------------------------------------------------------


def framed(payload: bytes) -> bytes:
    """`payload` as a record of a log: its length and CRC-32, then itself."""
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def payloads(data: bytes) -> Iterator[bytes]:
    """The payloads of the whole, valid records at the start of `data` (a log), in order: up
    to the end, or to a record cut short or failing its CRC (a torn or corrupt tail)."""
    offset = 0
    while offset + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, offset)
        start = offset + _HEAD.size
        if length > MAX_RECORD or start + length > len(data):
            return
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            return
        yield payload
        offset = start + length


def task_record(task_id: int, service: str, body: Any) -> bytes:
    """The record of a task pushed. Raises `TypeError` for a body msgpack cannot carry."""
    try:
        payload: bytes = msgpack.packb([_TASK, task_id, service, body], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"body cannot be sent: {exc} (bodies are msgpack values)") from exc
    return framed(payload)


def settled_record(task_id: int) -> bytes:
    """The record of a task settled (acked, or given up)."""
    payload: bytes = msgpack.packb([_SETTLED, task_id])
    return framed(payload)


def read_log(data: bytes) -> tuple[list[LoggedTask], int]:
    """The tasks `data` (a whole log) holds unsettled, in the order they were pushed, and how
    many of its bytes are whole, valid records (what follows is a torn or corrupt tail)."""
    live: dict[int, LoggedTask] = {}
    offset = 0
    for payload in payloads(data):
        try:
            record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception:  # (a CRC that matches garbage: this node did not write it)
            break
        if type(record) is not list or not record or type(record[0]) is not int:
            break
        if record[0] == _TASK and len(record) == 4:
            _, task_id, service, body = record
            live[task_id] = LoggedTask(task_id, service, body)
        elif record[0] == _SETTLED and len(record) == 2:
            live.pop(record[1], None)
        else:
            break
        offset += _HEAD.size + len(payload)
    return list(live.values()), offset


# -- the directory and its log, at the edge --------------------------------------------------------


class StateDirectory:
    """A node's state directory, locked for this process, and its outbox log (module rules)."""

    def __init__(self, path: str, lock_fd: int, log_fd: int, size: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._log_fd = log_fd
        self._size = size  # bytes in the log
        self._live: dict[int, int] = {}  # task id -> its record's size
        self._live_bytes = 0
        self._settled: list[bytes] = []  # buffered settled records
        self.closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> tuple[StateDirectory, list[LoggedTask]]:
        """Lock the directory at `path` (made if need be), read its outbox back and rewrite it
        with the tasks still unsettled, numbered from 1; returns it and those tasks, in the
        order they were pushed. Raises `StateDirectoryInUseError`, or `OSError`."""
        path = os.fspath(path)
        os.makedirs(path, mode=0o700, exist_ok=True)  # (made private; an existing one as it is)
        lock_fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateDirectoryInUseError(path) from None
            log_path = os.path.join(path, LOG_NAME)
            found, _ = read_log(read_whole(log_path))
            tasks = [LoggedTask(number, t.service, t.body) for number, t in enumerate(found, 1)]
            records = {task.task_id: task_record(*_fields(task)) for task in tasks}
            log_fd, size = rewrite_and_reopen(log_path, records.values())
        except BaseException:
            os.close(lock_fd)  # (the lock goes with it)
            raise
        directory = cls(path, lock_fd, log_fd, size)
        for task_id, record in records.items():
            directory._live[task_id] = len(record)
        directory._live_bytes = directory._size
        return directory, tasks

    @property
    def live(self) -> int:
        """Tasks written and not settled."""
        return len(self._live)

    def add(self, task_id: int, service: str, body: Any) -> None:
        """Write a task pushed (with the settled records buffered): in the kernel's hands on
        return. Raises `TypeError` for a body msgpack cannot carry (nothing written then)."""
        record = task_record(task_id, service, body)
        if self._settled:
            self._write(b"".join(self._settled) + record)
            self._settled.clear()
        else:
            self._write(record)
        self._live[task_id] = len(record)
        self._live_bytes += len(record)

    def settle(self, task_id: int) -> None:
        """A task was acked or given up on: it leaves the outbox (written with the next task, or
        by `flush`)."""
        size = self._live.pop(task_id, None)
        if size is None:
            return
        self._live_bytes -= size
        self._settled.append(settled_record(task_id))
        if len(self._settled) >= SETTLED_BUFFERED:
            self.flush()

    def flush(self) -> None:
        """Write the settled records buffered, and compact the log if it is due."""
        if self._settled:
            self._write(b"".join(self._settled))
            self._settled.clear()
        if self._size > COMPACT_BYTES and self._live_bytes * 4 < self._size:
            self._compact()

    def close(self) -> None:
        """Flush, close the log and unlock the directory. A second call does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._settled:
                self._write(b"".join(self._settled))
                self._settled.clear()
        finally:
            os.close(self._log_fd)
            os.close(self._lock_fd)

    def _write(self, data: bytes) -> None:
        write_all(self._log_fd, data)
        self._size += len(data)

    def _compact(self) -> None:
        log_path = os.path.join(self.path, LOG_NAME)
        found, _ = read_log(read_whole(log_path))
        records = [task_record(*_fields(task)) for task in found if task.task_id in self._live]
        self._log_fd, self._size = rewrite_and_reopen(log_path, records, self._log_fd)


def _fields(task: LoggedTask) -> tuple[int, str, Any]:
    return task.task_id, task.service, task.body


def read_whole(log_path: str) -> bytes:
    """The bytes of the log at `log_path` (none if there is no such file)."""
    try:
        with open(log_path, "rb") as log:
            return log.read()
    except FileNotFoundError:
        return b""


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (`os.write` may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def rewrite_and_reopen(log_path: str, records: Iterable[bytes], fd: int = -1) -> tuple[int, int]:
    """`_rewrite` the log at `log_path` with `records`, close `fd` (the log as it was, open
    for appending; -1: none) and open the new one for appending: its fd and its size."""
    records = list(records)
    _rewrite(log_path, records)
    if fd >= 0:
        os.close(fd)
    return os.open(log_path, os.O_WRONLY | os.O_APPEND), sum(map(len, records))


def _rewrite(log_path: str, records: Iterable[bytes]) -> None:
    """Replace the log at `log_path` with `records`, whole or not at all (a crash half way
    leaves the old log)."""
    temporary = log_path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for record in records:
            write_all(fd, record)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, log_path)
    directory = os.open(os.path.dirname(log_path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
