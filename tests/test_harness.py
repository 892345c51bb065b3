"""The checks that conftest.py runs after every test, run on small tests of their own in a pytest
subprocess: a forgotten socket, or a ZeroMQ context left running, fails the test that left it."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def run(pytester: pytest.Pytester, tests: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_inner="import time\n\nimport zmq\n\nfrom conftest import zmq_thread_names\n\n" + tests
    )
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_a_socket_left_open_in_the_context_fixture_fails_its_test(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
def test_forgets(context):
    context.socket(zmq.PUSH).bind("tcp://127.0.0.1:*")
    context.socket(zmq.SUB)

def test_closes(context):
    context.socket(zmq.PULL).close()

def test_zsocket_closes_its_own(zsocket):
    zsocket(zmq.PUB)
""",
    )
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_forgets*", "*ZeroMQ sockets left open by the test: PUSH, SUB*"]
    )


def test_a_zeromq_context_left_running_fails_its_test(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
LEFT = []

def test_leaves_a_context():
    ctx = zmq.Context()
    LEFT.append(ctx.socket(zmq.PUSH))  # a socket starts the context's threads
    # which name themselves a moment later (on a loaded machine, after the test could end)
    deadline = time.monotonic() + 10
    while len(zmq_thread_names()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)

def test_terminates_its_context():
    ctx = zmq.Context()
    ctx.socket(zmq.PUSH).close()
    ctx.term()
""",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaves_a_context*", "*ZeroMQ threads left running*"]
    )
