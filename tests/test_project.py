"""The project as a user meets it: the README's example, the examples, the CLI, and the checks
(ruff, mypy --strict) the code is held to."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # A mesh of its own, so that no other run on this machine shares it over mDNS.
    env = {**os.environ, "MESH_NAME": f"test-{uuid.uuid4().hex[:12]}"}
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def test_the_readme_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert blocks, "README.md has no python example"
    result = run(sys.executable, "-c", blocks[0], timeout=30)
    assert result.returncode == 0, result.stderr
    assert "order.created {'id': 42, 'items': ['book']}" in result.stdout
    assert "shipping {'id': 42}" in result.stdout


def test_the_readme_blocking_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (block,) = [block for block in blocks if "mesh.blocking.start(" in block]
    result = run(sys.executable, "-c", block, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "{'path': '/'}" in result.stdout
    assert "resizing {'image': 7}" in result.stdout
    assert "audit left: goodbye" in result.stdout


def test_the_two_node_example_runs() -> None:
    result = run(sys.executable, "examples/two_nodes.py", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cli_version_and_help() -> None:
    result = run(sys.executable, "-m", "mesh._cli", "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("mesh-cli ")
    result = run(sys.executable, "-m", "mesh._cli", "bench", "--help")
    assert result.returncode == 0
    assert "example: mesh-cli bench" in result.stdout


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_code_quality(command: tuple[str, ...]) -> None:
    tool = shutil.which(command[0], path=str(Path(sys.executable).parent)) or shutil.which(
        command[0]
    )
    if tool is None:
        pytest.skip(f"{command[0]} is not installed (it comes with the test extra)")
    result = run(tool, *command[1:], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("settings", ["Settings", "DetectorSettings"])
def test_every_settings_field_is_documented(settings: str) -> None:
    # help() shows the class docstring, not comments: each field must have its entry there.
    import dataclasses

    import mesh

    cls = getattr(mesh, settings)
    doc = cls.__doc__ or ""
    _, _, attributes = doc.partition("Attributes:\n")
    documented = set(re.findall(r"^        (\w+): \S", attributes, re.MULTILINE))
    assert documented == {f.name for f in dataclasses.fields(cls)}
