"""Network namespaces for ``mesh-cli demo --netns``: hosts on a virtual switch, made and removed
by the demo (root only).

The layout is the tests' (tests/test_netns.py): a switch namespace
holds a bridge; each host namespace holds one end of a veth pair, the other end a port of the
bridge. Both ends are born in the switch namespace: nothing is created in the machine's own
namespace, so no packet can leave through its real interfaces. Names and the private subnet are
unique per run, and `close` removes exactly what `open` made.

Each host knows every other's link-layer address from the start (permanent neighbour entries):
the kernel keeps one neighbour table for all namespaces, of at most 1,024 entries it may collect
(`gc_thresh3`), and N hosts resolving each other by ARP need N(N - 1): at 48 hosts (2,256)
the table overflows, ARP fails, and connections and datagrams between hosts are dropped.
Permanent entries are not counted against that limit.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

from ._common import UserError

_IP_TIMEOUT = 10.0


def _ip(*args: str, batch: str | None = None) -> str:
    """Run ``ip ARGS`` (with `batch`: ``ip ARGS -batch -``, the commands read from it)."""
    command = ["ip", *args] if batch is None else ["ip", *args, "-batch", "-"]
    done = subprocess.run(
        command, input=batch, check=True, capture_output=True, text=True, timeout=_IP_TIMEOUT
    )
    return done.stdout


def _mac(index: int) -> str:
    """A locally administered link-layer address for host `index` (1 ... 65535)."""
    return f"02:6d:65:73:{index >> 8:02x}:{index & 0xFF:02x}"


class Switch:
    """Hosts, one per name, each in a namespace of its own, on one bridge."""

    def __init__(self, names: Sequence[str]) -> None:
        if os.geteuid() != 0:
            raise UserError("--netns needs root (it creates network namespaces)", status=2)
        if shutil.which("ip") is None:
            raise UserError("--netns needs iproute2 ('ip')", status=2)
        prefix = f"md{os.getpid() % 10000}{secrets.token_hex(2)}"
        subnet = f"10.232.{secrets.randbelow(250)}"
        self.switch = f"{prefix}-sw"
        self.hosts = {
            name: (f"{prefix}-h{i}", f"{subnet}.{i}", f"sw{i}")
            for i, name in enumerate(names, start=1)
        }
        self._made: list[str] = []
        try:
            self._make()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            self.close()
            detail = getattr(exc, "stderr", "") or str(exc)
            raise UserError(f"cannot create the network namespaces: {detail.strip()}") from None

    def _make(self) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        neighbours: list[tuple[str, str]] = []  # (address, link-layer address) of every host
        for index, (namespace, address, port) in enumerate(self.hosts.values(), start=1):
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            neighbours.append((address, _mac(index)))
            veth = ["type", "veth", "peer", "name", "eth0", "address", neighbours[-1][1]]
            _ip("-n", self.switch, "link", "add", port, *veth, "netns", namespace)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
        for namespace, own, _ in self.hosts.values():
            entries = "".join(
                f"neigh replace {address} lladdr {mac} dev eth0 nud permanent\n"
                for address, mac in neighbours
                if address != own
            )
            _ip("-n", namespace, batch=entries)

    def place(self, name: str) -> tuple[list[str], str]:
        """The command prefix that runs a program on host `name`, and the host's address."""
        namespace, address, _ = self.hosts[name]
        return ["ip", "netns", "exec", namespace], address

    def cut(self, name: str) -> str:
        """Take host `name`'s switch port down: its packets go nowhere, it sees no error."""
        port = self.hosts[name][2]
        _ip("-n", self.switch, "link", "set", port, "down")
        return f"cut {name} off the switch (port {port} down)"

    def heal(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[name][2], "up")

    def close(self) -> None:
        """Kill what still runs in the namespaces made (only the demo's processes can be
        there), then delete them, which deletes their links. Idempotent."""
        for namespace in reversed(self._made):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    pids = [int(pid) for pid in _ip("netns", "pids", namespace).split()]
                except subprocess.CalledProcessError:
                    break
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.05)
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", namespace)
        self._made.clear()
