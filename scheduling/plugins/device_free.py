"""Device-free filter: reject sites whose training device is busy right now, where new work would queue."""

from __future__ import annotations

import math

from scheduling.base import Candidate
from scheduling.framework import FilterPlugin, FilterStatus, SchedulingContext

DEFAULT_MAX_UTILIZATION_PERCENT = 95.0


class DeviceFreeFilter(FilterPlugin):
    """Reject a site whose device is saturated: work sent there waits before it starts.

    A device at (or near) 100% utilization is running something else, the site's own
    workloads or the job's previous work that has not finished; a round sent there first
    queues behind it. Leaving such sites out for a round is what cuts the queueing time of
    the job's work (the load-balancing score only ranks them lower). A site that does not
    report ``device_utilization_percent`` passes.

    The limit comes from the plugin argument, else the scenario's threshold
    ``max_utilization_percent``, else 95 %.

    Args:
        max_utilization_percent: Reject at ``device_utilization_percent >= max_utilization_percent``.
    """

    name = "device-free"

    def __init__(self, max_utilization_percent: float | None = None) -> None:
        if max_utilization_percent is not None and not (
            math.isfinite(max_utilization_percent) and 0.0 < max_utilization_percent <= 100.0
        ):
            raise ValueError(
                "device-free: max_utilization_percent must be a number in (0, 100]; "
                f"found {max_utilization_percent!r}"
            )
        self.max_utilization_percent = max_utilization_percent

    def filter(self, candidate: Candidate, ctx: SchedulingContext) -> FilterStatus:
        util = candidate.readings.get("device_utilization_percent")
        if util is None:
            return FilterStatus()
        if not math.isfinite(util):
            return FilterStatus(
                (
                    f"reading device_utilization_percent is {util!r}; expected a finite number "
                    "(check the site's telemetry)",
                )
            )
        limit = self.max_utilization_percent
        if limit is None:
            limit = ctx.threshold("max_utilization_percent", DEFAULT_MAX_UTILIZATION_PERCENT)
        if util >= limit:
            return FilterStatus(
                (f"device busy: utilization {util:.0f}% >= {limit:g}% (new work would queue)",)
            )
        return FilterStatus()

    def __repr__(self) -> str:
        return f"DeviceFreeFilter(max_utilization_percent={self.max_utilization_percent})"
