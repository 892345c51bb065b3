"""mesh-cli: the command line. For now it only reports its version; the commands (peers, run,
pub, sub, push, work, demo, bench) arrive with their issues."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mesh-cli",
        description="Inspect and drive a brokerless mesh.",
    )
    parser.add_argument("--version", action="version", version=f"mesh-cli {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
