"""The one exception hierarchy of diffcore.

Every error raised on purpose by diffcore derives from :class:`DiffcoreError`, and its message says
what was given, what was expected and how to fix it. The CLI turns any ``DiffcoreError`` into a
one-paragraph message and exit status 2, never a traceback.
"""

from __future__ import annotations


class DiffcoreError(Exception):
    """Base class of every error diffcore raises on purpose."""


class SpecError(DiffcoreError, ValueError):
    """A spec (YAML/JSON file, mapping or ``--set`` override) is malformed.

    ``problems`` lists ``(field path, message)`` pairs; the path is dotted (``sampler.steps``,
    ``guidance.0.scale``) and empty for the whole document.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class UsageError(DiffcoreError, ValueError):
    """Bad input other than a spec: a latents file of the wrong shape, an impossible option."""


class PluginError(DiffcoreError):
    """A plugin failed to load, raised in its hook, or registered something invalid."""


class RegistryError(DiffcoreError, LookupError):
    """A registry lookup failed: an unknown kind or component name, or a duplicate name."""


class CompatibilityError(DiffcoreError, TypeError):
    """Components that cannot work together were assembled (e.g. DDIM with a non-linear process)."""


class SamplingError(DiffcoreError, RuntimeError):
    """Sampling failed, e.g. NaN or Inf appeared in the state or the score."""


class TrainingError(DiffcoreError, RuntimeError):
    """Training cannot go on, e.g. the loss or the gradient norm of a step is NaN or Inf.

    ``step`` is the 1-based optimiser step that failed (the step the run would have reached); the
    checkpoints written before it are intact.
    """

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message)
        self.step = step


class NonFiniteError(SamplingError):
    """NaN or Inf appeared during sampling.

    ``step`` is the 0-based index of the solver step in which it first appeared (as callbacks
    number steps; a whole adaptive ODE solve is step 0), ``t`` the time, ``evaluation`` the 1-based
    score evaluation when it was caught at a score evaluation (``None`` when caught at the end of a
    step).
    """

    def __init__(self, message: str, *, step: int, t: float, evaluation: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.t = t
        self.evaluation = evaluation


class StepLimitError(SamplingError):
    """An adaptive ODE solve reached its step limit (``max_steps``); ``t`` is where it stopped."""

    def __init__(self, message: str, *, t: float) -> None:
        super().__init__(message)
        self.t = t
