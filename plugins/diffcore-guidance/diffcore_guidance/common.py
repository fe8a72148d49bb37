"""What the guidance components share: the guidance interval parameter."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from diffcore.component import Params
from diffcore.errors import CompatibilityError
from diffcore.process import ForwardProcess

Interval = Annotated[list[Annotated[float, Field(ge=0.0)]], Field(min_length=2, max_length=2)]


class IntervalParams(Params):
    """``interval: [t_lo, t_hi]``: apply the guidance only at times ``t_lo <= t <= t_hi`` (process time
    units); elsewhere the score passes unchanged. Guiding only in a limited interval of noise levels
    improves sample quality and diversity (Kynkaanniemi et al. 2024)."""

    interval: Interval | None = Field(None, description="[t_lo, t_hi]: guide only at times in this range "
                                      "(Kynkaanniemi et al. 2024); null: at every time.")

    @model_validator(mode="after")
    def _ordered(self) -> IntervalParams:
        if self.interval is not None and self.interval[0] > self.interval[1]:
            raise ValueError(f"interval [{self.interval[0]}, {self.interval[1]}] is empty: its first time must not "
                             "exceed its second")
        return self

    def check_interval(self, guidance: str, process: ForwardProcess) -> None:
        """Refuse an interval that does not meet the process's times ``[t_min, T]``: the guidance would
        never act, and the samples would silently be unguided."""
        if self.interval is None:
            return
        lo, hi = self.interval
        if hi < process.t_min or lo > process.T:
            raise CompatibilityError(
                f"guidance {guidance!r}: `interval` [{lo:g}, {hi:g}] does not meet the times of process "
                f"{process.name!r}, [{process.t_min:g}, {process.T:g}], so the guidance would never act; give times "
                f"within [{process.t_min:g}, {process.T:g}] (process time, not noise level or step index)")
