"""Opening a node: checking what the caller asked for, making the ZeroMQ context and the
`Node`, running its tasks and its optional metrics server, and closing it all, whole, on exit
(also when one of its tasks fails: the context is destroyed with linger 0 when the goodbyes
cannot leave)."""

from __future__ import annotations

import functools
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from discovery import open_mdns, parse_contact
from discovery._groups import ungrouped

from ._binding import check_discovery, check_interfaces, check_keyed, open_context
from ._exporter import MetricsServer
from ._journal import StateDirectory
from ._keys import KeyPair, as_key_pair
from ._members import AllowSource
from ._node import Node
from ._types import DeadLetter, Settings
from ._wire import Kind


@asynccontextmanager
async def open_node(
    name: str | None = None,
    *,
    mesh: str = "default",
    interface: str | Iterable[str] = "127.0.0.1",
    pub_port: int = 0,
    pull_port: int = 0,
    seeds: Iterable[str] = (),
    discovery: str | Iterable[str] = "mdns",
    settings: Settings | None = None,
    dead_letter: Callable[[DeadLetter], None] | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    key: KeyPair | str | os.PathLike[str] | None = None,
    allow: AllowSource = (),
    insecure: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Node]:
    """Open a node: bind its sockets, start its tasks, find its peers; close it all on exit.

    `interface` is the IP address every socket binds to, mDNS included (127.0.0.1 unless told
    otherwise: a LAN is asked for explicitly), or a list of them (the node listens on the same
    ports on each, and each peer uses the one on its own network), or `ALL_INTERFACES` for every
    IPv4 address of the machine but loopback. Ports are ephemeral unless given.
    `discovery` is ``"mdns"`` (the default: nodes of the same `mesh` on the interface's network
    find each other), ``"static"`` (only `seeds` and `Node.connect`, for networks without
    multicast), or both, as a list. `seeds` are ``host:port`` inbox addresses of other nodes
    (their `Node.address`), honoured either way: each is sent a HELLO in the background,
    delivered whenever that node is up, and again every 5 s while no peer is known at its
    address (so that nodes cut apart for long meet again). Raises `ValueError` for a bad name,
    interface, port, seed or discovery, and `OSError` when a port cannot be bound or mDNS cannot
    start on the interface. `dead_letter` is called (in the node's task: it must not block)
    with each task the node gives up on after `Settings.max_attempts`; by default they are
    logged. With `metrics_port` (0: an ephemeral one), the node serves its statistics for
    Prometheus (``GET /metrics``, docs/metrics.md) on `metrics_host` (loopback unless told
    otherwise) from a thread of its own, at `Node.metrics_address` (`ValueError` for a port out
    of range or a host that is not an IP address, `OSError` if the address cannot be bound). On
    exit the node says goodbye to its peers (bounded by `Settings.goodbye_timeout`), withdraws
    its mDNS record, stops its tasks and its metrics server, closes every socket and terminates
    its ZeroMQ context.

    Members only (docs/security.md): with `key` (a `KeyPair`, or the path of one that ``mesh-cli
    keygen`` wrote), the node speaks CurveZMQ on every socket and peers only with nodes whose
    public key `allow` holds (a file of keys, one a line; a directory of ``*.pub`` files; or the
    keys themselves), or that share its own key pair; `Node.reload_allow` reads the list again.
    Its seeds are then written ``KEY@host:port`` (`Node.contact`). Without a key the mesh is
    open to anyone who can reach it, which only loopback is fit for: a node bound to any other
    address refuses to start without a key (`ValueError`) unless `insecure` is true, and then
    logs a warning.

    With `state_dir` (a directory, made if need be) the tasks the node pushes are kept there
    until they are acked or given up on, and a node opened later on the same directory sends
    those it finds again (`Node.push`; docs/decisions.md says what survives what). So are the
    last events it published (`Settings.history_events`), for subscribers that join late,
    also after a restart. One process at a time: another raises `StateDirectoryInUseError`.
    """
    settings = settings or Settings()
    hosts = check_interfaces(interface)
    methods = check_discovery(discovery, hosts)
    seeds = list(seeds)
    for seed in seeds:
        parse_contact(seed)
    key_pair = None if key is None else as_key_pair(key)
    check_keyed(hosts, key_pair, allow, insecure)
    if name is None:
        name = f"{stdlib_socket.gethostname()}-{os.getpid()}"
    if metrics_port is not None:
        MetricsServer.check_address(metrics_host, metrics_port)
    # First: a directory in use stops the node before anything is bound.
    state, recovered = (None, []) if state_dir is None else StateDirectory.open(state_dir)
    try:
        context, limits = open_context(settings.max_peers)
    except BaseException:
        if state is not None:
            state.close()
        raise
    node: Node | None = None
    metrics: MetricsServer | None = None
    try:
        with ungrouped():  # the user's exception comes out as it went in, not in a group
            node = Node(
                context,
                name=name,
                mesh=mesh,
                hosts=hosts,
                pub_port=pub_port,
                pull_port=pull_port,
                settings=settings,
                limits=limits,
                dead_letter=dead_letter,
                key=key_pair,
                allow=allow,
            )
            if state is not None:
                node._producer.journal = state
                node._producer.recover(recovered)
                node._publisher.keep_history_in(state.path)
            if metrics_port is not None:
                metrics = MetricsServer(
                    metrics_host,
                    metrics_port,
                    node._statistics_unless_closing,
                    trio.lowlevel.current_trio_token(),
                    {"mesh": node.mesh, "node": node.name},
                )
                node._metrics_address = metrics.address
            async with AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                node._start(nursery, seeds)
                if "mdns" in methods:
                    mdns = await stack.enter_async_context(open_mdns(node.record))
                    node._introductions.discover(mdns)
                try:
                    yield node
                finally:
                    await say_goodbye(node)
                    nursery.cancel_scope.cancel()
    finally:
        if metrics is not None:
            # In a thread, and shielded: a scrape in progress may be waiting on this one.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(metrics.close)
        try:
            if node is not None:
                close_sockets(node)
        finally:
            try:
                with trio.CancelScope(shield=True):
                    # Any socket still open (one a failure left half made) is closed at once, or
                    # term() would wait for ever; only the goodbyes' linger can make it wait.
                    await trio.to_thread.run_sync(functools.partial(context.destroy, linger=0))
            finally:
                if state is not None:
                    try:
                        if node is not None:
                            node._publisher.close_history()
                    finally:
                        state.close()  # (the unsettled tasks stay in it, for the next run)


async def say_goodbye(node: Node) -> None:
    """Tell every peer this node is leaving, then stop all its work. Bounded and shielded."""
    if node._closing:
        return
    node._closing = True
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + node._settings.goodbye_timeout
        node._worker.stop()
        # Unless the PUB's outbox is full: the goodbye also goes to each inbox.
        node._publisher.publish_control(None, Kind.BYE, None)
        node._membership.goodbye()
        for link in list(node._links.values()):
            await link.outbox.wait_empty()
        await node._pub.wait_empty()
    node._events.end()
    node._producer.wake_all()
    node._membership.end()


def close_sockets(node: Node) -> None:
    """Close the node's sockets, giving the goodbyes `Settings.goodbye_timeout` to leave."""
    linger = round(node._settings.goodbye_timeout * 1000)
    node._pub.socket.close(linger=linger)  # so the goodbye still goes out
    node._links.close_all(linger)
    node._pull.close()
    node._events.close()
    node._heartbeats.close()
    if node._members is not None:
        node._members.close()
