"""pytest fixtures for plugin authors, loaded through diffcore's ``pytest11`` entry point.

``diffcore_plugin(plugin, name=None)`` registers a plugin in the process-wide registry for the
current test only::

    def test_my_sampler(diffcore_plugin):
        diffcore_plugin(my_plugin_module)
        pipe = Pipeline.from_spec({... "sampler": {"type": "my_sampler"}})
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest


@pytest.fixture
def diffcore_plugin() -> Iterator[Callable[..., Any]]:
    from diffcore.testing import plugin_registered  # imported lazily: no torch import at pytest start-up

    with ExitStack() as stack:
        def register(plugin: object, name: str | None = None) -> Any:
            return stack.enter_context(plugin_registered(plugin, name))

        yield register
