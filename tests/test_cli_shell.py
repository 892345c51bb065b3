"""mesh-cli as a shell tool: one-line mistakes, readers that go away, bodies from stdin and
files, the task's environment for --exec workers, ``wait``, ``completion``, and the README's
shell example run as written. Every command runs as a process (``python -m mesh._cli``) on
127.0.0.1, in a mesh of its own; every process is killed by its pid at the end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .test_cli import (
    CLI,
    FINISH,
    FOREIGN,
    ROOT,
    START,
    Spawn,
    assert_one_line_error,
    environment,
    finish,
    free_port,
    mesh,
    new_mesh,
    spawn,
    start_node,
    wait_up,
)

__all__ = ["mesh", "spawn"]  # fixtures, used by name
pytestmark = pytest.mark.slow


def run_cli(mesh: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """A command that ends by itself, with `input` on its stdin."""
    done = subprocess.run(
        [*CLI, *args],
        cwd=ROOT,
        env=environment(mesh),
        input=input,
        capture_output=True,
        timeout=FINISH + 10,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not FOREIGN.search(line)]


# -- mistakes: one line, non-zero --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("push", "", "1"), 2, ["bad service name ''", "1 to 255 bytes"]),
        (("work", ""), 2, ["bad service name ''"]),
        (("run", "--service", ""), 2, ["bad service name ''"]),
        (("wait", "--service", ""), 2, ["bad service name ''"]),
        (("push", "s" * 256, "1"), 2, ["bad service name", "255 bytes"]),
        (("pub", "é" * 513, "1"), 2, ["bad topic", "1024 bytes"]),  # 513 characters, 1026 bytes
        (("sub", "t" * 1025), 2, ["bad prefix", "1024 bytes"]),
        (("sub", "x\udcff"), 2, ["bad prefix", "not valid UTF-8"]),  # argv byte 0xff
        (("push", "s", "@/nonexistent/body.json"), 2, ["/nonexistent/body.json", "No such file"]),
        (("pub", "t", "@/nonexistent/body.json", "--raw"), 2, ["/nonexistent/body.json"]),
        (("push", "s"), 2, ["required: BODY", "mesh-cli push --help"]),
        (("completion", "fish"), 2, ["invalid choice: 'fish'"]),
        (("wait", "--count", "0"), 2, ["--count", "at least 1"]),
        (("run", "--grace", "-1"), 2, ["--grace", "0 or more"]),
        (("run", "--name", ""), 2, ["cannot open a node: name must be 1 to 255 bytes"]),
        (("peers", "--mesh", "m" * 251), 2, ["cannot open a node: mesh must be 1 to 250 bytes"]),
    ],
    ids=[
        "push-empty-service",
        "work-empty-service",
        "run-empty-service",
        "wait-empty-service",
        "service-too-long",
        "topic-too-long-in-bytes",
        "prefix-too-long",
        "prefix-not-utf8",
        "body-file-missing",
        "raw-body-file-missing",
        "argument-missing",
        "completion-unknown-shell",
        "wait-count-zero",
        "grace-negative",
        "empty-node-name",
        "mesh-name-too-long",
    ],
)
def test_mistakes_are_one_line(
    spawn: Spawn, args: tuple[str, ...], status: int, words: list[str]
) -> None:
    got, stdout, stderr = finish(spawn(*args))
    assert_one_line_error(got, stderr, f"mesh-cli {args[0]}:", *words)
    assert got == status
    assert not stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("peers", "--timeout", "1"), []),
        (("pub", "t", "1", "--wait", "1"), ["nothing published"]),
        (("push", "s", "1", "--timeout", "1"), []),
        (("wait", "--timeout", "1"), ["found 0 of 1 peer"]),
    ],
    ids=["peers", "pub", "push", "wait"],
)
def test_a_seed_nobody_answers_at_is_named(
    spawn: Spawn, args: tuple[str, ...], words: list[str]
) -> None:
    seed = f"127.0.0.1:{free_port()}"
    cli = spawn(*args, "--seed", seed)
    status, _, stderr = finish(cli)
    assert_one_line_error(
        status, stderr, f"mesh-cli {args[0]}:", f"no node answered at --seed {seed}"
    )
    for word in words:
        assert word in stderr[0]
    assert status == 1


def test_a_seed_that_answers_is_no_mistake(spawn: Spawn) -> None:
    node = wait_up(start_node(spawn, "a", "--service", "s"))
    status, stdout, stderr = finish(spawn("wait", "--service", "s", "--seed", node["address"]))
    assert status == 0, stderr
    assert stdout == ["1 peer offering 's' ready: a"]


def test_push_says_given_up_not_timeout(spawn: Spawn) -> None:
    node = start_node(spawn, "w", "--service", "jobs", "--exec", "sh -c 'echo no >&2; exit 3'")
    wait_up(node)
    status, stdout, stderr = finish(spawn("push", "jobs", "1", "--timeout", "10"))
    assert status == 1
    assert stdout == ["0 of 1 tasks for 'jobs' acked (5 nacked, 4 redelivered, 1 given up)"]
    assert re.fullmatch(
        r"mesh-cli push: 1 task given up after 5 attempts \(last attempt: .*exit status 3: no\)",
        stderr[-1],
    ), stderr
    assert "timeout" not in stderr[-1]


def test_push_says_not_acked_before_the_timeout(spawn: Spawn) -> None:
    # A worker that takes the task and does not finish it in time; it leaves at once after.
    node = start_node(spawn, "w", "--service", "slow", "--exec", "sleep 30", "--grace", "0.1")
    wait_up(node)
    status, _, stderr = finish(spawn("push", "slow", "1", "--timeout", "2"))
    assert status == 1
    assert stderr[-1] == "mesh-cli push: 1 task not acked before --timeout 2 s", stderr
    node.send(signal.SIGTERM)  # its sleep is cancelled (killed) with the task
    assert node.wait() == 0


# -- a reader that goes away -------------------------------------------------------------------


class Piped:
    """A command whose stdout the test reads and then closes, as ``head -1`` does."""

    def __init__(self, mesh: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env=environment(mesh),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if not FOREIGN.search(line):
                self.stderr.append(line)
                self._ready.set()
        self.process.stderr.close()

    def wait_ready(self) -> None:
        assert self._ready.wait(START), f"{self.process.args} printed nothing"

    def head(self) -> bytes:
        """The first line of stdout; then its reader goes away."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.process.stdout.close()
        return line

    def finish(self) -> int:
        try:
            status = self.process.wait(FINISH)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(FINISH)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._reader.join(FINISH)


def assert_quiet(piped: Piped) -> None:
    for line in piped.stderr:
        assert "Traceback" not in line, piped.stderr
        assert "Exception ignored" not in line, piped.stderr
        assert "warning" not in line, piped.stderr


def test_sub_ends_quietly_when_its_reader_goes(spawn: Spawn, mesh: str) -> None:
    watch = spawn("peers", "--watch", "--timeout", "1")
    watch.wait_for("^no peers yet$", "stdout")
    sub = Piped(mesh, "sub", "x.")
    try:
        sub.wait_ready()
        name = re.search(r" as (\S+)$", sub.stderr[0])
        assert name, sub.stderr
        assert run_cli(mesh, "pub", "x.1", '"one"').returncode == 0
        assert sub.head().startswith(b"x.1 ")
        assert run_cli(mesh, "pub", "x.2", '"two"').returncode == 0
        assert sub.finish() == 141
        assert_quiet(sub)
        # It left as a node does, saying goodbye.
        watch.wait_for(rf"^\S+ {re.escape(name[1])} left \(goodbye\)$", "stdout")
    finally:
        sub.kill()


@pytest.mark.parametrize("command", ["work", "run"])
def test_a_worker_ends_quietly_and_hands_back_when_its_reader_goes(
    spawn: Spawn, mesh: str, command: str
) -> None:
    args = ("work", "s") if command == "work" else ("run", "--name", "printer", "--service", "s")
    worker = Piped(mesh, *args)
    try:
        worker.wait_ready()
        assert run_cli(mesh, "push", "s", "1").returncode == 0
        assert worker.head().startswith(b"s ")
        # The next task cannot be shown: it is handed back, and the worker leaves quietly.
        second = spawn("push", "s", "2", "--timeout", "30")
        assert worker.finish() == 141
        assert_quiet(worker)
        second.wait_for(
            r"warning: task 1 for 's' was refused by \S+: the worker's output was closed"
        )
    finally:
        worker.kill()


def test_peers_watch_ends_quietly_when_its_reader_goes(spawn: Spawn, mesh: str) -> None:
    a = wait_up(start_node(spawn, "a"))
    watch = Piped(mesh, "peers", "--watch", "--json", "--seed", a["address"])
    try:
        first = json.loads(watch.head())
        assert (first["name"], first["change"]) == ("a", "present")
        wait_up(start_node(spawn, "b"))  # a change to print, to nobody
        assert watch.finish() == 141
        assert_quiet(watch)
    finally:
        watch.kill()


# -- peers --watch --json ----------------------------------------------------------------------


def test_peers_watch_json_lists_the_peers_there_first(spawn: Spawn) -> None:
    up = {node["name"]: node for node in (wait_up(start_node(spawn, n)) for n in ("a", "b"))}
    # Seeded as well as found by mDNS, so that both are there before the watch starts however
    # busy the machine (it waits for a seed's answer up to --timeout).
    seeds = [arg for node in up.values() for arg in ("--seed", node["address"])]
    watch = spawn("peers", "--watch", "--json", "--timeout", "10", *seeds)
    watch.wait_for(r'"name": "b"', "stdout")
    c = start_node(spawn, "c")
    wait_up(c)
    watch.wait_for(r'"name": "c"', "stdout")
    watch.send(signal.SIGINT)
    assert watch.wait() == 0, watch.output
    changes = [json.loads(line) for line in watch.stdout]
    assert [(x["name"], x["change"]) for x in changes[:2]] == [("a", "present"), ("b", "present")]
    for change in changes[:2]:
        assert change["id"].startswith(up[change["name"]]["id"])
        assert change["state"] == "alive"
        assert set(change) == {"time", "change", "id", "name", "state", "reason", "text"}
    assert ("c", "joined") in [(x["name"], x["change"]) for x in changes[2:]]
    assert all(set(x) == set(changes[0]) for x in changes)


# -- bodies from stdin and files; the task's environment -------------------------------------

#: Writes its stdin and its environment to files named after the task; fails the first attempt
#: of a body that says "again".
RECORDER = """\
name="$MESH_TASK_SENDER-$MESH_TASK_ID-$MESH_TASK_ATTEMPT"
cat > "$OUT/$name.body"
env | grep -E '^MESH_(TASK_|SERVICE=)' | sort > "$OUT/$name.env"
if grep -q again "$OUT/$name.body" && [ "$MESH_TASK_ATTEMPT" = 1 ]; then exit 1; fi
"""


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_exec_gets_the_task_in_its_environment_and_bodies_from_stdin_and_files(
    spawn: Spawn, mesh: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "record.sh"
    script.write_text(RECORDER)
    env = environment(mesh, OUT=str(out))
    node = start_node(spawn, "w", "--service", "rec", "--exec", f"sh {script}", env=env)
    wait_up(node)

    done = run_cli(mesh, "push", "rec", "-", input=b'{"again": true}\n')
    assert done.returncode == 0, done.stderr
    envs = {path.name: read_env(path) for path in out.glob("*.env")}
    assert len(envs) == 2, envs  # two attempts
    first, second = (envs[name] for name in sorted(envs))
    assert set(first) == {
        "MESH_TASK_ID",
        "MESH_TASK_SENDER",
        "MESH_TASK_ATTEMPT",
        "MESH_TASK_REDELIVERED",
        "MESH_SERVICE",
    }
    assert re.fullmatch("[0-9a-f]{32}", first["MESH_TASK_SENDER"])
    assert first["MESH_TASK_ID"].isdigit()
    assert (first["MESH_TASK_ATTEMPT"], first["MESH_TASK_REDELIVERED"]) == ("1", "0")
    assert (second["MESH_TASK_ATTEMPT"], second["MESH_TASK_REDELIVERED"]) == ("2", "1")
    assert first["MESH_SERVICE"] == second["MESH_SERVICE"] == "rec"
    same = ("MESH_TASK_ID", "MESH_TASK_SENDER")
    assert [first[key] for key in same] == [second[key] for key in same]
    bodies = {path.read_bytes() for path in out.glob("*.body")}
    assert bodies == {b'{"again": true}'}  # JSON from stdin, sent as JSON

    for path in out.iterdir():
        path.unlink()
    raw = bytes([0xFF, 0, 0x61, 0x0A])  # not UTF-8: sent as bytes
    (tmp_path / "raw.bin").write_bytes(raw)
    done = run_cli(mesh, "push", "rec", f"@{tmp_path / 'raw.bin'}", "--raw")
    assert done.returncode == 0, done.stderr
    assert [path.read_bytes() for path in out.glob("*.body")] == [raw]

    for path in out.iterdir():
        path.unlink()
    done = run_cli(mesh, "push", "rec", "-", "--raw", input="héllo\n".encode())
    assert done.returncode == 0, done.stderr
    assert [path.read_bytes() for path in out.glob("*.body")] == ["héllo\n".encode()]


def test_pub_body_from_a_file_and_stdin(spawn: Spawn, mesh: str, tmp_path: Path) -> None:
    body = tmp_path / "event.json"
    body.write_text('{"id": 42}\n')
    sub = spawn("sub", "e.", "--count", "2", "--json")
    sub.wait_for("^subscribed to 'e.'")
    assert run_cli(mesh, "pub", "e.file", f"@{body}").returncode == 0
    assert run_cli(mesh, "pub", "e.stdin", "-", "--raw", input=b"text\n").returncode == 0
    status, stdout, _ = finish(sub)
    assert status == 0, sub.output
    events = {event["topic"]: event["body"] for event in map(json.loads, stdout)}
    assert events == {"e.file": {"id": 42}, "e.stdin": "text\n"}


def test_a_body_that_is_not_json_says_where_it_came_from(spawn: Spawn, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text("not json")
    status, _, stderr = finish(spawn("push", "s", f"@{body}"))
    assert_one_line_error(status, stderr, f"the body in '{body}' is not valid JSON", "--raw")
    assert status == 2
    done = run_cli(new_mesh(), "pub", "t", "-", input=b"{")
    assert_one_line_error(done.returncode, lines(done.stderr), "the body on stdin is not valid")


# -- wait --------------------------------------------------------------------------------------


def test_wait_for_workers_of_a_service(spawn: Spawn, mesh: str) -> None:
    a = wait_up(start_node(spawn, "a", "--service", "s"))
    wait_up(start_node(spawn, "b"))
    status, stdout, stderr = finish(spawn("wait", "--service", "s"))
    assert status == 0, stderr
    assert stdout == ["1 peer offering 's' ready: a"]
    status, stdout, _ = finish(spawn("wait", "--count", "2"))
    assert status == 0
    assert stdout == ["2 peers ready: a, b"]
    status, stdout, stderr = finish(
        spawn("wait", "--service", "s", "--count", "2", "--timeout", "3", "--seed", a["address"])
    )
    assert_one_line_error(status, stderr, "mesh-cli wait:")
    assert stderr == [f"mesh-cli wait: found 1 of 2 peers offering 's' in mesh {mesh!r} within 3 s"]
    assert status == 1
    assert not stdout


def test_wait_returns_once_the_worker_comes(spawn: Spawn) -> None:
    waiting = spawn("wait", "--service", "late", "--timeout", "30")
    wait_up(start_node(spawn, "late-worker", "--service", "late"))
    status, stdout, _ = finish(waiting)
    assert status == 0, waiting.output
    assert stdout == ["1 peer offering 'late' ready: late-worker"]


# -- completion --------------------------------------------------------------------------------


def completion_script(shell: str) -> str:
    done = subprocess.run(
        [*CLI, "completion", shell],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=FINISH,
        check=True,
    )
    return done.stdout


def complete(script: Path, *words: str) -> list[str]:
    """What the bash completion function offers for `words` (the last one being completed)."""
    probe = (
        f"source {script}\n"
        f"COMP_WORDS=(mesh-cli {shlex.join(words)})\n"
        f"COMP_CWORD={len(words)}\n"
        "_mesh_cli\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=FINISH,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_completion(tmp_path: Path) -> None:
    script = tmp_path / "mesh-cli.bash"
    script.write_text(completion_script("bash"))
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=FINISH)
    assert complete(script, "pu") == ["pub", "push"]
    assert set(complete(script, "")) >= {"peers", "wait", "run", "completion", "bench"}
    assert complete(script, "wait", "--ser") == ["--service"]
    assert complete(script, "peers", "--w") == ["--watch"]
    assert "--json" in complete(script, "push", "s", "1", "--")
    assert complete(script, "completion", "") == ["bash", "zsh"]
    assert complete(script, "run", "--name", "") == []  # a free value: bash's own completion


@pytest.mark.skipif(shutil.which("zsh") is None, reason="no zsh here")
def test_zsh_completion_parses(tmp_path: Path) -> None:
    script = tmp_path / "_mesh-cli"
    script.write_text(completion_script("zsh"))
    subprocess.run(["zsh", "-n", str(script)], check=True, timeout=FINISH)


def test_completion_help_says_how_to_install(spawn: Spawn) -> None:
    status, stdout, _ = finish(spawn("completion", "--help"))
    assert status == 0
    assert 'eval "$(mesh-cli completion bash)"' in "\n".join(stdout)


# -- the README's shell example ----------------------------------------------------------------


def test_the_readme_shell_example_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## mesh-cli\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the mesh-cli section has one shell example"
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # "from a checkout"
    bin_dir = Path(sys.executable).parent
    env = environment(new_mesh(), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shutil.which("mesh-cli", path=env["PATH"]), "mesh-cli is installed with the package"
    shell = subprocess.Popen(
        ["bash", "-e", "-c", blocks[0]],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the background worker with it
    )
    try:
        stdout, stderr = shell.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what is left of the group it made
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    assert shell.returncode == 0, stdout + stderr
    assert "1 peer offering 'thumbnail' ready: thumbs" in stdout
    assert "3 of 3 tasks for 'thumbnail' acked" in stdout
    assert "1 of 1 tasks for 'thumbnail' acked" in stdout
    assert re.search(r"^thumbs\s+[0-9a-f]{8}\s+127\.0\.0\.1:\d+\s+thumbnail\s+alive", stdout, re.M)
    done = sorted(path.name for path in (tmp_path / "thumbnails").iterdir())
    assert len(done) == 4, done
    assert all(re.fullmatch(r"[0-9a-f]{32}-\d+\.done", name) for name in done)
    assert stderr.splitlines()[-1] == "mesh-cli run: left"
