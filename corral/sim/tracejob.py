"""One job of a trace: the value every trace loader returns and the engine replays."""

from __future__ import annotations

from dataclasses import dataclass, field

from corral.sim.profiles import ApplicationProfile


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace: when it arrives, what it asks for, and how much work it is."""

    id: str
    submit_time: float
    gpus: int  # devices requested (what a rigid policy gives it)
    duration: float | None = None  # seconds alone on `gpus` packed devices; None when `profile` decides
    min_gpus: int = 0  # 0: same as gpus
    max_gpus: int = 0  # 0: same as gpus
    priority: int = 0
    user: str = "default"
    application: str | None = None  # Pollux application name, when the job has a profile
    batch_size: int | None = None  # total batch the user asked for (Pollux jobs)
    profile: ApplicationProfile | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.min_gpus:
            object.__setattr__(self, "min_gpus", self.gpus)
        if not self.max_gpus:
            object.__setattr__(self, "max_gpus", self.gpus)
        if not 1 <= self.min_gpus <= self.gpus <= self.max_gpus:
            raise ValueError(
                f"job {self.id}: need 1 <= min_gpus <= gpus <= max_gpus, got "
                f"{self.min_gpus}, {self.gpus}, {self.max_gpus}"
            )
        if self.profile is None and not (self.duration is not None and self.duration > 0):
            raise ValueError(f"job {self.id}: a positive duration or an application profile is required")
