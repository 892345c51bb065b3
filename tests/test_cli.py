"""mesh-cli as a user drives it: every command run as a process against real nodes on 127.0.0.1,
checking what it prints and how it exits, the user errors included.

Each test has a mesh of its own (a uuid), so that runs on this machine at the same time never
see each other's nodes. Nothing here sleeps to synchronise: a test waits, with a bound, for the
line a process prints once it is ready; every process is killed by its pid at the end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh import Gap, KeyPair
from mesh._cli import main as cli_main
from mesh._cli._pubsub import _gap_line

from .conftest import new_mesh_name

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "mesh._cli"]
pytestmark = pytest.mark.slow

#: Generous bounds: other test runs share this machine, and a process may take a few seconds
#: to start when it is busy. Each is an upper bound; a passing test waits far less.
START = 15.0  # a process prints its readiness line
FINISH = 15.0  # a process that should end on its own ends


#: What any node on 127.0.0.1 logs when some other program (another test run, say) announces
#: an mDNS record it cannot read: not this command's output.
FOREIGN = re.compile(r"ignoring an mDNS announcement \(")


def new_mesh() -> str:
    return new_mesh_name("test-cli")


def environment(mesh: str, **variables: str) -> dict[str, str]:
    """This process's environment without any MESH_* variable, then `mesh` as MESH_NAME."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MESH_")}
    env["MESH_NAME"] = mesh
    env.update(variables)
    return env


class Cli:
    """One mesh-cli process, its stdout and stderr read line by line in threads as they come
    (a full pipe would freeze it)."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.args = args
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._closed: set[str] = set()
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, pipe: Any) -> None:
        for line in pipe:
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()
        pipe.close()
        with self._changed:
            self._closed.add(name)
            self._changed.notify_all()

    def wait_for(
        self, pattern: str, stream: str = "stderr", timeout: float = START
    ) -> re.Match[str]:
        """The first line of `stream` that `pattern` matches (searched), as it arrives; fails
        if none has come after `timeout` seconds or the stream ended without one."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                for line in self.lines[stream][seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines[stream])
                if stream in self._closed:
                    pytest.fail(f"{self} ended without a line matching {pattern!r}\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"no line matching {pattern!r} from {self} in {timeout} s\n{self.output}"
                    )
                self._changed.wait(left)

    def wait(self, timeout: float = FINISH) -> int:
        """The exit status, once the process has ended and all its output is read."""
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self} still running after {timeout} s\n{self.output}")
        for reader in self._readers:
            reader.join(timeout)
        return status

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    @property
    def stdout(self) -> list[str]:
        with self._changed:
            return list(self.lines["stdout"])

    @property
    def stderr(self) -> list[str]:
        """The lines of stderr, but for warnings about other programs' mDNS records."""
        with self._changed:
            return [line for line in self.lines["stderr"] if not FOREIGN.search(line)]

    @property
    def output(self) -> str:
        return "stdout:\n{}\nstderr:\n{}".format("\n".join(self.stdout), "\n".join(self.stderr))

    def __str__(self) -> str:
        return f"mesh-cli {shlex.join(self.args)} (pid {self.process.pid})"


Spawn = Callable[..., Cli]


@pytest.fixture
def mesh() -> str:
    return new_mesh()


@pytest.fixture
def spawn(mesh: str) -> Iterator[Spawn]:
    """Start mesh-cli in the test's mesh (or with `env` as given); each process is killed by
    its pid when the test ends, whatever happened."""
    started: list[Cli] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Cli:
        cli = Cli(args, env if env is not None else environment(mesh))
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.kill()


def finish(cli: Cli, timeout: float = FINISH) -> tuple[int, list[str], list[str]]:
    status = cli.wait(timeout)
    return status, cli.stdout, cli.stderr


def start_node(spawn: Spawn, name: str, *args: str, env: dict[str, str] | None = None) -> Cli:
    return spawn("run", "--name", name, *args, env=env)


def wait_up(node: Cli) -> dict[str, str]:
    """Wait for `run`'s "node NAME (ID) at ADDRESS ..." line; its fields."""
    match = node.wait_for(r"node (?P<name>\S+) \((?P<id>[0-9a-f]+)\) at (?P<address>\S+) in mesh")
    return match.groupdict()


def assert_one_line_error(status: int, stderr: list[str], *words: str) -> None:
    """The user-error rule: a non-zero status and one line on stderr, no traceback."""
    assert status != 0
    assert len(stderr) == 1, stderr
    assert "Traceback" not in stderr[0]
    assert stderr[0].startswith("mesh-cli ")
    for word in words:
        assert word in stderr[0]


def peers_json(cli: Cli) -> list[dict[str, Any]]:
    status, stdout, _ = finish(cli)
    assert status == 0, cli.output
    rows = json.loads("\n".join(stdout))
    assert isinstance(rows, list)
    return rows


# -- help --------------------------------------------------------------------------------------


def test_every_command_has_help_with_an_example(
    spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    status, stdout, _ = finish(spawn("--help"))
    assert status == 0
    # The commands, as listed under "positional arguments" (indented by four, then the help).
    commands = {m.group(1) for line in stdout if (m := re.match(r"^    (\w+)(\s|$)", line))}
    assert {"peers", "wait", "run", "pub", "sub", "push", "work", "bench", "completion"} <= commands
    # Each command's help in this process: the same parser, without a start-up per command.
    for command in sorted(commands):
        with pytest.raises(SystemExit) as exited:
            cli_main([command, "--help"])
        assert exited.value.code == 0
        out, err = capsys.readouterr()
        assert f"example: mesh-cli {command}" in out, out
        assert not err


def test_no_command_shows_usage_and_fails(spawn: Spawn) -> None:
    status, stdout, stderr = finish(spawn())
    assert status != 0
    assert "usage: mesh-cli" in "\n".join(stdout + stderr)


# -- peers -------------------------------------------------------------------------------------


def test_peers_lists_the_nodes_of_its_mesh(spawn: Spawn, mesh: str) -> None:
    a = start_node(spawn, "a", "--service", "s1", "--service", "s2")
    b = start_node(spawn, "b")
    up = {node["name"]: node for node in (wait_up(a), wait_up(b))}

    rows = peers_json(spawn("peers", "--json", "--timeout", "10"))
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"a", "b"}, rows
    for name, row in by_name.items():
        assert {"id", "name", "mesh", "address", "endpoints", "services", "state"} <= set(row)
        assert row["id"].startswith(up[name]["id"])
        assert row["address"] == up[name]["address"]
        assert row["mesh"] == mesh
        assert row["endpoints"]["pull"] == f"tcp://{row['address']}"
        assert row["endpoints"]["pub"].startswith("tcp://127.0.0.1:")
        assert row["state"] == "alive"
    assert by_name["a"]["services"] == ["s1", "s2"]
    assert by_name["b"]["services"] == []

    status, stdout, _ = finish(spawn("peers", "--timeout", "10"))
    assert status == 0
    assert stdout[0].split()[:3] == ["NAME", "ID", "ADDRESS"]
    table = {line.split()[0]: line.split() for line in stdout[1:]}
    assert table["a"][1:4] == [up["a"]["id"][:8], up["a"]["address"], "s1,s2"]
    assert table["b"][1:4] == [up["b"]["id"][:8], up["b"]["address"], "-"]


def test_peers_in_an_empty_mesh_says_so(spawn: Spawn, mesh: str) -> None:
    status, stdout, stderr = finish(spawn("peers", "--timeout", "1"))
    assert status == 0
    assert not stdout
    assert stderr == [f"no peers found in mesh {mesh!r} on 127.0.0.1"]
    assert peers_json(spawn("peers", "--json", "--timeout", "1")) == []


def test_peers_watch_logs_joins_and_leaves_until_interrupted(spawn: Spawn) -> None:
    wait_up(start_node(spawn, "a"))
    watch = spawn("peers", "--watch", "--timeout", "10")
    # Not a terminal: the table once, then one line per change.
    watch.wait_for(r"^NAME\s+ID\s+ADDRESS", "stdout")
    watch.wait_for(r"^a\s", "stdout")
    b = start_node(spawn, "b")
    wait_up(b)
    watch.wait_for(r"^\d\d:\d\d:\d\d b joined$", "stdout")
    b.send(signal.SIGTERM)
    assert b.wait() == 0
    watch.wait_for(r"^\d\d:\d\d:\d\d b left \(goodbye\)$", "stdout")
    watch.send(signal.SIGINT)
    started = time.monotonic()
    assert watch.wait(5) == 0, watch.output
    assert time.monotonic() - started < 5
    assert not any("Traceback" in line for line in watch.stderr), watch.output


def test_peers_mesh_option_wins_over_mesh_name(spawn: Spawn, mesh: str) -> None:
    wait_up(start_node(spawn, "a"))
    other = new_mesh()
    from_environment = spawn("peers", "--json", env=environment(mesh))
    option_wins = spawn("peers", "--json", "--mesh", mesh, env=environment(other))
    elsewhere = spawn("peers", "--json", "--timeout", "1", "--mesh", other, env=environment(mesh))
    assert "a" in {row["name"] for row in peers_json(from_environment)}
    assert "a" in {row["name"] for row in peers_json(option_wins)}
    assert peers_json(elsewhere) == []


def test_peers_reads_mesh_interface(spawn: Spawn, mesh: str) -> None:
    wait_up(start_node(spawn, "a"))
    loopback = spawn("peers", "--json", env=environment(mesh, MESH_INTERFACE="127.0.0.1"))
    option_wins = spawn(
        "peers", "--json", "--interface", "127.0.0.1", env=environment(mesh, MESH_INTERFACE="x.y")
    )
    bad = spawn("peers", env=environment(mesh, MESH_INTERFACE="x.y"))
    assert "a" in {row["name"] for row in peers_json(loopback)}
    assert "a" in {row["name"] for row in peers_json(option_wins)}
    status, _, stderr = finish(bad)
    assert_one_line_error(status, stderr, "mesh-cli peers:", "'x.y'")
    assert status == 2


def test_peers_reads_mesh_seeds(spawn: Spawn, mesh: str) -> None:
    a = wait_up(start_node(spawn, "a"))
    closed_port = free_port()  # a seed where nobody listens: tried in the background, no harm
    seeded = spawn(
        "peers",
        "--json",
        env=environment(mesh, MESH_SEEDS=f" {a['address']} , 127.0.0.1:{closed_port}"),
    )
    option_wins = spawn(
        "peers", "--json", "--seed", a["address"], env=environment(mesh, MESH_SEEDS="nonsense")
    )
    bad = spawn("peers", env=environment(mesh, MESH_SEEDS="nonsense"))
    assert "a" in {row["name"] for row in peers_json(seeded)}
    assert "a" in {row["name"] for row in peers_json(option_wins)}
    status, _, stderr = finish(bad)
    assert_one_line_error(status, stderr, "mesh-cli peers: bad MESH_SEEDS:", "'nonsense'")
    assert status == 2


# -- run ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_leaves_on_a_signal(spawn: Spawn, signum: int) -> None:
    node = start_node(spawn, "a", "--service", "s")
    wait_up(node)
    node.send(signum)
    status, stdout, stderr = finish(node)
    assert status == 0, node.output
    assert stderr[-2].startswith(f"mesh-cli run: {signal.Signals(signum).name}: leaving")
    assert stderr[-1] == "mesh-cli run: left"
    assert not stdout


def test_run_verbose_logs_peers_joining_and_leaving(spawn: Spawn) -> None:
    watcher = start_node(spawn, "a", "-v")
    wait_up(watcher)
    other = start_node(spawn, "b")
    wait_up(other)
    watcher.wait_for(r"^mesh-cli run: info: b joined: at \S+, id [0-9a-f]{8}$")
    other.send(signal.SIGTERM)
    assert other.wait() == 0
    watcher.wait_for(r"^mesh-cli run: info: b left: said goodbye$")
    quiet = start_node(spawn, "c")
    wait_up(quiet)
    watcher.wait_for(r"^mesh-cli run: info: c joined: at ")
    quiet.send(signal.SIGTERM)
    status, _, stderr = finish(quiet)
    assert status == 0
    assert not any(": info: " in line for line in stderr), stderr  # not without -v


#: A worker for --exec: a shell script (it starts in a millisecond even on a busy machine,
#: and a failing task runs it five times) that fails the bodies that say "fail".
WORKER = """\
body=$(cat)
case "$body" in
*fail*) echo "cannot do $body" >&2; exit 3 ;;
esac
echo "did $body"
"""


def test_run_exec_acks_and_nacks_by_exit_status(spawn: Spawn, tmp_path: Path) -> None:
    script = tmp_path / "worker.sh"
    script.write_text(WORKER)
    command = shlex.join(["sh", str(script)])
    node = start_node(spawn, "w", "--service", "jobs", "--exec", command)
    wait_up(node)

    status, stdout, stderr = finish(spawn("push", "jobs", '{"n": 7}', "--count", "2", "--json"))
    assert status == 0, stderr
    outcome = json.loads(stdout[0])
    assert outcome == {
        "service": "jobs",
        "tasks": 2,
        "sent": 2,
        "acked": 2,
        "nacked": 0,
        "redelivered": 0,
        "given_up": 0,
        "not_done": 0,
    }
    node.wait_for(r'^did {"n": 7}$', "stdout")

    failing = spawn("push", "jobs", '{"fail": true}', "--json", "--timeout", "10")
    status, stdout, stderr = finish(failing)
    assert status == 1, failing.output
    outcome = json.loads(stdout[0])
    assert outcome["acked"] == 0
    assert outcome["nacked"] >= 1
    assert outcome["given_up"] == 1
    assert outcome["not_done"] == 1
    assert stderr[-1].startswith("mesh-cli push: 1 task given up after 5 attempts (last attempt: ")
    assert not any("Traceback" in line for line in stderr)
    # The library's warnings are named lines too, like the command's own.
    assert any(
        line.startswith("mesh-cli push: warning: task ") and "was refused by" in line
        for line in stderr
    ), stderr
    # The worker says why each attempt failed, with the command's own stderr.
    node.wait_for(r"task \S+ \(jobs, attempt 1\) failed: exit status 3: cannot do")

    status, stdout, _ = finish(spawn("push", "jobs", '{"n": 8}'))
    assert status == 0
    assert stdout == ["1 of 1 tasks for 'jobs' acked (0 nacked, 0 redelivered, 0 given up)"]
    node.wait_for(r'^did {"n": 8}$', "stdout")
    node.send(signal.SIGTERM)
    assert node.wait() == 0


def test_run_reply_answers_requests_with_the_commands_output(spawn: Spawn, tmp_path: Path) -> None:
    script = tmp_path / "worker.sh"
    script.write_text(WORKER)
    command = shlex.join(["sh", str(script)])
    node = start_node(spawn, "p", "--service", "jobs", "--exec", command, "--reply")
    assert "serving jobs" in node.wait_for(r"node p .* serving jobs").group(0)

    status, stdout, stderr = finish(spawn("request", "jobs", '{"n": 7}', "--count", "2"))
    assert status == 0, stderr
    assert stdout == ['did {"n": 7}', 'did {"n": 7}']

    status, stdout, stderr = finish(spawn("request", "jobs", "plain", "--raw", "--json"))
    assert status == 0, stderr
    reply = json.loads(stdout[0])
    assert (reply["service"], reply["reply"]) == ("jobs", "did plain\n")
    assert reply["ms"] > 0

    status, stdout, stderr = finish(spawn("request", "jobs", '{"fail": 1}'))
    assert stdout == []
    assert_one_line_error(
        status, stderr, "mesh-cli request: error from 'jobs': exit status 3: cannot do"
    )
    node.wait_for(r"request \S+ \(jobs, attempt 1\) failed: exit status 3: cannot do")

    status, stdout, stderr = finish(spawn("request", "nobody", "1", "--timeout", "0.2"))
    assert_one_line_error(status, stderr, "no provider serves 'nobody' (waited 0.2 s)")
    node.send(signal.SIGTERM)
    assert node.wait() == 0


def test_run_reply_needs_exec(spawn: Spawn) -> None:
    status, _, stderr = finish(spawn("run", "--service", "s", "--reply"))
    assert_one_line_error(status, stderr, "mesh-cli run:", "--reply needs an --exec")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--exec", "cat"), ["--exec needs a --service"]),
        (("--service", "s", "--exec", "nosuchprogram-0d6f"), ["nosuchprogram-0d6f"]),
        (("--service", "s", "--exec", "'unclosed"), ["cannot parse --exec"]),
    ],
    ids=["without-service", "no-such-program", "unparsable"],
)
def test_run_exec_mistakes(spawn: Spawn, args: tuple[str, ...], words: list[str]) -> None:
    status, _, stderr = finish(spawn("run", *args))
    assert status == 2
    assert_one_line_error(status, stderr, "mesh-cli run:", *words)


# -- pub / sub ---------------------------------------------------------------------------------


def test_sub_with_history_starts_with_what_a_publisher_keeps(spawn: Spawn) -> None:
    publisher = spawn("pub", "news.a", '"tick"', "--count", "1000", "--rate", "4", "--wait", "1")
    try:
        # A subscriber of the plain kind sees two events: the publisher is publishing.
        status, stdout, _ = finish(spawn("sub", "news.", "--count", "2", "--json"))
        assert status == 0
        seen = json.loads(stdout[0])["seq"]
        # One that starts later with --history sees the ones before it too, then the live ones.
        status, stdout, stderr = finish(
            spawn("sub", "news.", "--history", "100", "--count", "4", "--json")
        )
        assert status == 0, stderr
        seqs = [json.loads(line)["seq"] for line in stdout]
        assert seqs[0] <= seen  # published before it subscribed: from the publisher's history
        assert seqs == sorted(set(seqs))  # in order, none twice
    finally:
        publisher.send(signal.SIGINT)
        publisher.wait()


def test_pub_reaches_sub_as_json_lines(spawn: Spawn) -> None:
    sub = spawn("sub", "orders.", "--count", "3", "--json")
    sub.wait_for("^subscribed to 'orders.' in mesh ")

    status, _, stderr = finish(spawn("pub", "stock.low", '{"sku": 1}'))
    assert status == 0
    assert stderr == ["published 1 event on 'stock.low' with 1 peer in the mesh"]
    status, _, stderr = finish(spawn("pub", "orders.created", '{"id": 42}', "--count", "3"))
    assert status == 0
    assert stderr == ["published 3 events on 'orders.created' with 1 peer in the mesh"]

    status, stdout, _ = finish(sub)
    assert status == 0, sub.output
    events = [json.loads(line) for line in stdout]
    assert len(events) == 3
    for event in events:
        assert event["topic"] == "orders.created"  # never stock.low
        assert re.fullmatch("[0-9a-f]{32}", event["sender"])
        assert event["sender_name"].startswith("mesh-cli-pub-")
        assert event["body"] == {"id": 42}
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3


def test_sub_shows_a_gap_as_a_line_of_its_own() -> None:
    gap = Gap("ab" * 16, 5, 9, "evicted", "chat.room")
    assert _gap_line(gap, "alice", as_json=False) == (
        "# gap: chat.room alice events 5..9 lost (evicted)"
    )
    assert json.loads(_gap_line(gap, "alice", as_json=True)) == {
        "gap": True,
        "topic": "chat.room",
        "sender": "ab" * 16,
        "sender_name": "alice",
        "first_seq": 5,
        "last_seq": 9,
        "reason": "evicted",
    }


def test_sub_timeout_with_too_few_events(spawn: Spawn) -> None:
    # The timeout counts from the "subscribed" line, and must outlast a pub's start-up on a
    # busy machine.
    sub = spawn("sub", "t.", "--count", "2", "--timeout", "12")
    sub.wait_for("^subscribed to 't.' ")
    status, _, stderr = finish(spawn("pub", "t.x", "1"))
    assert status == 0
    assert stderr == ["published 1 event on 't.x' with 1 peer in the mesh"]
    status, stdout, stderr = finish(sub)
    assert status == 1, sub.output
    assert len(stdout) == 1
    assert stdout[0].startswith("t.x mesh-cli-pub-")
    assert stdout[0].endswith(" 1")
    assert stderr[-1] == "mesh-cli sub: 1 of 2 events in 12 s"


def test_pub_raw_text_and_sub_lines(spawn: Spawn) -> None:
    sub = spawn("sub", "chat", "--count", "1")
    sub.wait_for("^subscribed to 'chat'")
    status, _, _ = finish(spawn("pub", "chat.room", "{not json, just text", "--raw"))
    assert status == 0
    status, stdout, _ = finish(sub)
    assert status == 0
    assert len(stdout) == 1
    topic, sender, body = stdout[0].split(" ", 2)
    assert topic == "chat.room"
    assert sender.startswith("mesh-cli-pub-")
    assert body == '"{not json, just text"'


def test_sub_timeout_with_nothing_published(spawn: Spawn) -> None:
    sub = spawn("sub", "", "--count", "1", "--timeout", "1")
    sub.wait_for("^subscribed to '' ")
    status, stdout, stderr = finish(sub)
    assert status == 1
    assert not stdout
    assert stderr[-1] == "mesh-cli sub: 0 of 1 events in 1 s"


def test_sub_leaves_on_sigint(spawn: Spawn) -> None:
    sub = spawn("sub", "x")
    sub.wait_for("^subscribed to 'x'")
    sub.send(signal.SIGINT)
    status, stdout, stderr = finish(sub, 5)
    assert status == 0, sub.output
    assert not stdout
    assert len(stderr) == 1


# -- push / work -------------------------------------------------------------------------------


def test_push_to_work(spawn: Spawn) -> None:
    work = spawn("work", "resize")
    work.wait_for("^working for 'resize' in mesh ")
    status, stdout, stderr = finish(spawn("push", "resize", '{"image": "cat.png"}', "--count", "3"))
    assert status == 0, stderr
    assert stdout == ["3 of 3 tasks for 'resize' acked (0 nacked, 0 redelivered, 0 given up)"]
    assert not stderr
    work.send(signal.SIGINT)
    status, stdout, _ = finish(work, 5)
    assert status == 0, work.output
    assert len(stdout) == 3
    for line in stdout:
        service, sender, body = line.split(" ", 2)
        assert (service, body) == ("resize", '{"image": "cat.png"}')
        assert sender.startswith("mesh-cli-push-")


def test_work_count_then_leave(spawn: Spawn) -> None:
    work = spawn("work", "echo", "--count", "2", "--json")
    work.wait_for("^working for 'echo'")
    push = spawn("push", "echo", "plain words", "--raw", "--count", "2", "--json", "--timeout", "8")
    status, stdout, _ = finish(work)
    assert status == 0, work.output
    tasks = [json.loads(line) for line in stdout]
    assert len(tasks) == 2
    for task in tasks:
        assert task["service"] == "echo"
        assert task["body"] == "plain words"
        assert task["attempt"] == 1
        assert re.fullmatch("[0-9a-f]{32}", task["sender"])
        assert task["sender_name"].startswith("mesh-cli-push-")
    assert tasks[0]["id"] != tasks[1]["id"]

    status, stdout, _ = finish(push)
    outcome = json.loads(stdout[0])
    # The worker leaves right after its last ack: its goodbye on the PUB may be read before
    # those acks, which must count all the same (docs/protocol.md section 11).
    assert status == 0, push.output
    assert (outcome["acked"], outcome["redelivered"]) == (2, 0)


def test_push_with_no_worker_fails_in_one_line(spawn: Spawn) -> None:
    push = spawn("push", "nobody", "1", "--timeout", "1")
    status, stdout, stderr = finish(push)
    assert_one_line_error(status, stderr, "mesh-cli push:", "no worker offers 'nobody'")
    assert status == 1
    assert stdout == ["0 of 1 tasks for 'nobody' acked (0 nacked, 0 redelivered, 0 given up)"]


def test_push_with_a_state_dir_keeps_what_no_worker_took_for_the_next_run(
    spawn: Spawn, tmp_path: Path
) -> None:
    state = str(tmp_path / "outbox")
    push = spawn(
        "push", "later", '{"n": 1}', "--count", "5", "--state-dir", state, "--timeout", "1"
    )
    status, stdout, stderr = finish(push)
    assert status == 1
    assert stdout == [f"0 tasks acked (5 pushed now), 0 given up, 5 kept in {state}"]
    assert_one_line_error(status, stderr, "mesh-cli push: 5 tasks not acked", state)

    work = spawn("work", "later", "--count", "7")
    work.wait_for("^working for 'later' in mesh ")
    push = spawn("push", "later", '{"n": 2}', "--count", "2", "--state-dir", state, "--json")
    status, stdout, stderr = finish(push)
    assert status == 0, push.output
    assert json.loads(stdout[0]) == {
        "service": "later",
        "tasks": 2,
        "recovered": 5,
        "acked": 7,
        "given_up": 0,
        "kept": 0,
    }
    status, stdout, _ = finish(work)
    assert status == 0, work.output
    bodies = sorted(line.split(" ", 2)[2] for line in stdout)
    assert bodies == ['{"n": 1}'] * 5 + ['{"n": 2}'] * 2


# -- user errors -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_local(address: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
        return True


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("peers", "--interface", "not-an-ip"), 2, ["'not-an-ip'"]),
        (("run", "--interface", "10.255.255.1"), 2, ["refusing to run open", "mesh-cli keygen"]),
        (("run", "--key", "/no/such/key"), 2, ["/no/such/key"]),
        (("pub", "t", "{not json"), 2, ["not valid JSON", "--raw"]),
        (("push", "s", "{not json"), 2, ["not valid JSON", "--raw"]),
        (("run", "--seed", "no-port"), 2, ["bad --seed", "'no-port'"]),
        (("peers", "--seed", "127.0.0.1:99999"), 2, ["bad --seed", "127.0.0.1:99999"]),
        (("sub", "x", "--seed", "[::1"), 2, ["bad --seed", "[::1"]),
    ],
    ids=[
        "interface-not-an-ip",
        "open-off-loopback",
        "key-not-there",
        "pub-body-not-json",
        "push-body-not-json",
        "seed-without-port",
        "seed-port-out-of-range",
        "seed-unparsable",
    ],
)
def test_user_errors_are_one_line(
    spawn: Spawn, args: tuple[str, ...], status: int, words: list[str]
) -> None:
    if "10.255.255.1" in args and is_local("10.255.255.1"):
        pytest.skip("10.255.255.1 is an address of this machine")
    cli = spawn(*args)
    got, stdout, stderr = finish(cli)
    assert_one_line_error(got, stderr, f"mesh-cli {args[0]}:", *words)
    assert got == status
    assert not stdout


@pytest.mark.parametrize("option", ["--pull-port", "--pub-port"])
def test_a_port_in_use_is_one_line(spawn: Spawn, option: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        status, stdout, stderr = finish(spawn("run", option, str(port)))
    assert_one_line_error(status, stderr, "mesh-cli run:", str(port), "in use")
    assert not stdout


def test_keygen_writes_a_pair_and_never_overwrites(spawn: Spawn, tmp_path: Path) -> None:
    status, stdout, _ = finish(spawn("keygen", str(tmp_path / "k")))
    assert status == 0
    pair = KeyPair.load(tmp_path / "k")
    assert stdout == [pair.public]
    status, _, stderr = finish(spawn("keygen", str(tmp_path / "k")))
    assert_one_line_error(status, stderr, "not overwriting")
