"""Reading and checking a site's telemetry answer, and formatting per-site problem lists."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from flwr.app import RecordDict

from coordinator.auth import ReplyVerifier
from fedcore import records as R
from fedcore.config.table import QualitySpec

__all__ = ["read_telemetry"]


def read_telemetry(
    content: RecordDict,
    members: Collection[str],
    verifier: ReplyVerifier,
    round_: int,
    run_key: str,
    quality: QualitySpec | None = None,
) -> tuple[R.Telemetry | None, str | None]:
    """A telemetry answer for ``round_`` and the reason to refuse it (``None``: accepted).

    Refused, with no telemetry: content that does not parse
    (:meth:`~fedcore.records.Telemetry.from_content`: types, ranges, readings in their
    physical ranges), a site outside the scenario, a signature that does not verify
    (another site's key, another round or run). Refused with its telemetry (it is the
    site's own, so the reason can name the site): a data size of 0, which no aggregation
    weight can come from; a data-quality summary failing the ``quality`` gate (the
    scenario's ``data_quality``; ``None``: no gate), with every threshold it fails.
    """
    try:
        tel = R.Telemetry.from_content(content)
    except ValueError as exc:
        return None, f"malformed telemetry: {exc}"
    if tel.site_id not in members:
        return None, f"site id {tel.site_id!r:.80} is not a member of this scenario"
    refusal = verifier.check(R.TELEMETRY, tel.site_id, round_, run_key, tel.digest(), content)
    if refusal is not None:
        return None, f"claims site {tel.site_id!r}: {refusal}"
    if tel.num_train_examples < 1:
        why = R.DATA_PROBLEMS.get(tel.data_problem, R.DATA_PROBLEMS["unloadable"])
        return tel, f"reports 0 training examples: {why}; expected at least 1"
    if quality is not None and tel.quality:
        from fedcore.data.quality import gate_reasons

        reasons = gate_reasons(tel.quality, quality)
        if reasons:
            return tel, f"data quality: {'; '.join(reasons)}"
    return tel, None


def _fmt(problems: Mapping[str, list[str]]) -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in problems.items()) or "none"
