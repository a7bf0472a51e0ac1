"""The faults to inject (`FaultPlan`): plain settings that engines/faults.py applies and the
config's `faults:` section is (pipeline/config/sections.py). It imports nothing of the project,
so `engines/base.py` can name it and `engines/faults.py` can import `engines/base.py`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

HOUR_S = 3_600.0


class FaultPlan(BaseModel):
    """Injected faults per inference call, to watch and test recovery: probabilities (0..1) per
    call, `hang_s` seconds of a hang, `slow_ms` milliseconds of a slowdown, and a `seed` for
    a repeatable sequence. It is also the config's `faults:` section (pipeline/config/sections.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    hang_rate: float = Field(0.0, ge=0.0, le=1.0)
    hang_s: float = Field(5.0, ge=0.0, le=HOUR_S)
    slow_rate: float = Field(0.0, ge=0.0, le=1.0)
    slow_ms: float = Field(50.0, ge=0.0, le=HOUR_S * 1000)
    corrupt_rate: float = Field(0.0, ge=0.0, le=1.0)
    sticky_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Errors that poison the process running the engine (a CUDA illegal address)."
    )
    crash_rate: float = Field(0.0, ge=0.0, le=1.0, description="Kills the process running the engine.")
    drift_rate: float = Field(
        0.0, ge=0.0, le=1.0,
        description="The context starts giving plausible but wrong outputs (every float x0.99) and keeps on: "
        "no per-batch check can tell, only the health probe.",
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @property
    def active(self) -> bool:
        rates = (self.error_rate, self.hang_rate, self.slow_rate, self.corrupt_rate, self.sticky_rate, self.crash_rate,
                 self.drift_rate)  # fmt: skip
        return any(r > 0 for r in rates)
