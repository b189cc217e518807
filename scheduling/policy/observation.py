"""What a scale/migrate policy sees of the cluster each decision period, and what it may do."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

import numpy as np

ACTIONS = ("hold", "scale-up", "scale-down", "migrate")
"""Actions of a scale/migrate policy, by index: keep the job as it is; add a site (or a
device of a chosen site's pool) to the job; drop the slowest site; move the slowest
site's work to the fastest idle device of its own pool."""


@dataclass(frozen=True)
class ClusterObservation:
    """The cluster state a policy acts on; every field is scaled to about [0, 1].

    Attributes:
        active_fraction: Sites training in the job / sites available.
        mean_utilization: Mean device utilization of the active sites, / 100.
        max_temperature: Hottest active device's temperature / its throttle temperature.
        straggler_ratio: (slowest predicted site duration / median) - 1, clipped to [0, 4], / 4.
        dropout_rate: Share of the active sites that failed in the last period.
        queue: Mean wait of work before it starts last period / round deadline, clipped to 1.
        deadline_miss: Last round's duration / deadline - 1, clipped to [0, 1].
        spare_devices: Idle devices in the pools of active sites / devices of active sites.
    """

    active_fraction: float
    mean_utilization: float
    max_temperature: float
    straggler_ratio: float
    dropout_rate: float
    queue: float
    deadline_miss: float
    spare_devices: float

    def to_vector(self) -> np.ndarray:
        """The fields in declaration order, ``float32 [OBSERVATION_SIZE]``."""
        return np.asarray(astuple(self), dtype=np.float32)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> ClusterObservation:
        """Inverse of :meth:`to_vector`."""
        values = np.asarray(vector, dtype=np.float64).reshape(-1)
        if values.shape[0] != OBSERVATION_SIZE:
            raise ValueError(
                f"a cluster observation has {OBSERVATION_SIZE} values; found {values.shape[0]}"
            )
        return cls(*(float(v) for v in values))


OBSERVATION_SIZE = len(fields(ClusterObservation))
"""Length of :meth:`ClusterObservation.to_vector`."""
