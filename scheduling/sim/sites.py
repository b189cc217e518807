"""What the simulated cluster runs: a site's setup (SimSite), the work sent to it, the outcome, its training rate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from scheduling.sim.load import LoadPattern
from scheduling.sim.profiles import (
    DeviceProfile,
    get_profile,
)


def training_rate(
    base_examples_per_s: float,
    relative_throughput: float,
    background_percent: float,
    throttle: float = 1.0,
    min_share: float = 0.05,
    headroom: float = 0.0,
) -> float:
    """Examples per second a device trains on, given its background load and throttle factor.

    ``base * throughput * max(min_share, 1 - background / 100 - headroom) * throttle``:
    the site's own workloads keep their share of the device, plus ``headroom`` kept free
    when the scheduler asks for it; the federation gets the rest (never less than
    ``min_share``).

    >>> training_rate(2000.0, 1.0, 25.0)  # 2000 * 1 * 0.75 * 1
    1500.0
    """
    share = max(min_share, 1.0 - background_percent / 100.0 - headroom)
    return base_examples_per_s * relative_throughput * share * throttle


@dataclass(frozen=True)
class SimSite:
    """One simulated site.

    Attributes:
        site_id: The site's id.
        devices: Its device pool, as profile names (see :data:`~scheduling.sim.profiles.PROFILES`).
        num_train_examples: Training examples it holds.
        tz_offset_h: Its clock minus UTC, hours (drives the business-hours load).
        failure_prob: Chance that one piece of work fails (the site drops out mid-round).
        bandwidth_bytes_per_s: Network bandwidth to the coordinator, bytes per second.
        ambient_offset_c: Machine-room temperature above nominal (hot rooms throttle sooner).
        load: Shape of the site's own workloads on its devices.
        cpu_count: Host CPU cores (telemetry ``cpu_count``).
        host_memory_mib: Host RAM, MiB (a CPU device's memory).
    """

    site_id: str
    devices: tuple[str, ...]
    num_train_examples: int
    tz_offset_h: float = 0.0
    failure_prob: float = 0.02
    bandwidth_bytes_per_s: float = 1.25e8
    ambient_offset_c: float = 0.0
    load: LoadPattern = field(default_factory=LoadPattern)
    cpu_count: int = 64
    host_memory_mib: float = 524_288.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        if not self.devices:
            raise ValueError(
                f"site {self.site_id!r}: the device pool is empty; name at least one profile"
            )
        for name in self.devices:
            get_profile(name)  # ValueError listing the valid names
        if self.num_train_examples < 0:
            raise ValueError(
                f"site {self.site_id!r}: num_train_examples must be >= 0; found {self.num_train_examples}"
            )
        if not 0.0 <= self.failure_prob <= 1.0:
            raise ValueError(
                f"site {self.site_id!r}: failure_prob must be in [0, 1]; found {self.failure_prob}"
            )
        if not self.bandwidth_bytes_per_s > 0:
            raise ValueError(
                f"site {self.site_id!r}: bandwidth_bytes_per_s must be > 0; found {self.bandwidth_bytes_per_s}"
            )

    @property
    def profiles(self) -> tuple[DeviceProfile, ...]:
        """The pool's device profiles, by index."""
        return tuple(get_profile(n) for n in self.devices)


@dataclass(frozen=True)
class Work:
    """One site's share of a round.

    Attributes:
        steps: Local optimizer steps.
        examples_per_step: Batch size.
        device: Pool index to train on; ``None``: the site's current device.
        upload_bytes: Bytes sent back (the protected update).
        download_bytes: Bytes received first (the global model).
        memory_mib: Device memory the training needs; more than is free fails the work.
        headroom: Share of the device the work leaves free beyond the background load
            (the scheduler's headroom), 0 to 1.
    """

    steps: int
    examples_per_step: int
    device: int | None = None
    upload_bytes: int = 0
    download_bytes: int = 0
    memory_mib: float = 0.0
    headroom: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.examples_per_step < 1:
            raise ValueError(
                f"Work needs steps >= 0 and examples_per_step >= 1; found {self.steps} and {self.examples_per_step}"
            )
        if self.upload_bytes < 0 or self.download_bytes < 0 or self.memory_mib < 0:
            raise ValueError(
                "Work bytes and memory must be >= 0; found "
                f"upload {self.upload_bytes}, download {self.download_bytes}, memory {self.memory_mib}"
            )
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError(f"Work headroom must be in [0, 1); found {self.headroom}")

    @property
    def examples(self) -> int:
        """Examples processed: steps * examples_per_step."""
        return self.steps * self.examples_per_step


@dataclass(frozen=True)
class Outcome:
    """What became of one site's work.

    ``duration_s = network_s + started_after_s + compute_s``: the model downloads, the
    work waits for the device, trains, and the update uploads. A failed site stopped
    ``duration_s`` seconds in; the parts are what it spent until then.

    Attributes:
        site_id: The site.
        device: Pool index it ran on.
        started_after_s: Wait for the device (queued work, a saturating burst).
        compute_s: Training time.
        network_s: Download plus upload time.
        duration_s: Wall time from the start of the round to the update's arrival (or the failure).
        failed: Whether the site dropped out.
        reason: Why it failed; ``None`` when it did not.
    """

    site_id: str
    device: int
    started_after_s: float
    compute_s: float
    network_s: float
    duration_s: float
    failed: bool = False
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return asdict(self)
