"""A griffe extension for the API reference: diffcore's docstrings use Sphinx roles
(``:func:`name```, ``:class:`~mod.Name```) and literal blocks introduced by ``::``; Markdown shows the
roles as code spans of the name, and the indented block after a line ending in ``:`` as code."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const):`~?([^`]+)`")
LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` as `` `target` `` and a closing ``::`` as ``:`` in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = LITERAL.sub(":", ROLE.sub(r"`\1`", obj.docstring.value))
