"""``diffcore demo`` (being written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffcore demo``."""


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    raise NotImplementedError
