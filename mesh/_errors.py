"""The exceptions a node raises.

Named by who caused them, as in h11 and trio: `ProtocolError` means a *peer* sent something that
breaks the wire protocol (the node drops it and carries on; only the codec raises it);
`NoWorkerError`, `PeerUnreachableError` and `MissingPeersError` mean the mesh could not do what
was asked in time (they are `TimeoutError`s too); `RemoteError` means a request's provider
answered with an error, or no provider answered.
Bad arguments from the caller raise the usual `ValueError`/`TypeError`, and using a node after it
closed raises `trio.ClosedResourceError`.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error this library raises on purpose."""


class ProtocolError(MeshError):
    """A frame broke wire protocol v1 (see docs/protocol.md).

    Raised only by the codec, for data that came from outside. `reason` is a short stable tag
    (``"truncated"``, ``"oversized"``, ``"malformed"``, ``"version"``, ``"kind"``, ``"type"``,
    ``"nesting"``, ``"record"``) suitable as a statistics key.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NoWorkerError(MeshError, TimeoutError):
    """No live peer offered `service` (with room for another task) before the timeout passed."""

    def __init__(self, service: str, timeout: float) -> None:
        super().__init__(f"no worker for service {service!r} within {timeout:g} s")
        self.service = service
        self.timeout = timeout


class PeerUnreachableError(MeshError, TimeoutError):
    """No node answered at `address` before the timeout passed."""

    def __init__(self, address: str, timeout: float) -> None:
        super().__init__(f"no node answered at {address} within {timeout:g} s")
        self.address = address
        self.timeout = timeout


class MissingPeersError(MeshError, TimeoutError):
    """The peers `wait_for_peers` asked for were not all there before the timeout passed.

    `missing` names what was lacking: the names not seen, and how many peers short of `count`.
    """

    def __init__(self, missing: str, timeout: float) -> None:
        super().__init__(f"{missing} after {timeout:g} s")
        self.missing = missing
        self.timeout = timeout


class RemoteError(MeshError):
    """A request got an error instead of a reply: its provider failed on it (raised, or left the
    ``serve`` block without replying; `message` is what it said), or the request went to as many
    providers as `Settings.request_attempts` allows and none replied."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message


class StateDirectoryInUseError(MeshError):
    """Another process has the node's state directory (`open_node`'s `state_dir`): two nodes
    must not share one."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the state directory {path} is in use by another process")
        self.path = path
