"""The coordinator's data-quality gate: a site's quality summary in its signed telemetry, checked and refused with its reasons."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import MetricRecord, RecordDict

from coordinator.auth import ReplyVerifier
from coordinator.telemetry_checks import read_telemetry
from fedcore import records as R
from fedcore.config.table import QualitySpec
from fedcore.records.replies import TELEMETRY_QUALITY

RUN_KEY = "run-quality"
ROUND = 3
KEY = ec.derive_private_key(10_000_019, ec.SECP256R1())
PUBLIC = KEY.public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
)
VERIFIER = ReplyVerifier({"bank-a": PUBLIC})

GOOD = {
    "rows": 5000.0,
    "missing_share": 0.01,
    "duplicate_share": 0.0,
    "out_of_range_share": 0.002,
    "non_finite_share": 0.0,
    "label_rate": 0.03,
    "train_label_rate": 0.025,
    "missing:amount": 50.0,
    "psi:amount": 0.01,
    "max_psi": 0.01,
    "dropped_share": 0.01,
    "rows_after": 4950.0,
}


def signed(tel: R.Telemetry) -> RecordDict:
    payload = R.signing_payload(R.TELEMETRY, tel.site_id, ROUND, RUN_KEY, tel.digest())
    return R.attach_signature(tel.to_content(), KEY.sign(payload, ec.ECDSA(hashes.SHA256())))


def telemetry(quality: dict[str, float]) -> R.Telemetry:
    return R.Telemetry("bank-a", 3500, "cpu", "cpu", {"cpu_util_percent": 12.5}, 0, "", quality)


def test_quality_round_trip_and_digest() -> None:
    tel = telemetry(GOOD)
    back = R.Telemetry.from_content(tel.to_content())
    assert back == tel and back.digest() == tel.digest()
    # without a summary nothing changes: no record, the digest of earlier versions
    plain = telemetry({})
    assert TELEMETRY_QUALITY not in plain.to_content().metric_records
    assert plain.digest() != tel.digest()
    assert R.Telemetry.from_content(plain.to_content()).quality == {}


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"missing_share": 1.5}, "telemetry quality 'missing_share': expected a finite number"),
        ({"rows": -1.0}, "in [0, 1e+15], found -1.0"),
        ({"rows": float("nan")}, "found nan"),
        ({"Rows": 1.0}, "expected keys like 'missing_share'"),
        ({"psi:amount value": 0.1}, "found 'psi:amount value'"),
        ({f"psi:c{i}": 0.0 for i in range(513)}, "at most 512 entries, found 513"),
    ],
)
def test_malformed_quality_is_refused(record: dict[str, float], says: str) -> None:
    content = telemetry({}).to_content()
    content[TELEMETRY_QUALITY] = MetricRecord(record)
    with pytest.raises(ValueError, match="telemetry quality") as err:
        R.Telemetry.from_content(content)
    assert says in str(err.value)
    tel, why = read_telemetry(content, {"bank-a"}, VERIFIER, ROUND, RUN_KEY, QualitySpec())
    assert tel is None and why is not None and why.startswith("malformed telemetry:")


def test_a_site_failing_the_gate_is_refused_with_its_reasons() -> None:
    bad = {**GOOD, "missing_share": 0.31, "rows_after": 120.0}
    tel, why = read_telemetry(
        signed(telemetry(bad)), {"bank-a"}, VERIFIER, ROUND, RUN_KEY, QualitySpec()
    )
    assert tel is not None and tel.site_id == "bank-a"  # named: the reply is the site's own
    assert why == (
        "data quality: missing_share 0.31 > data_quality.max_missing_share 0.2: fix the "
        "site's missing values or raise the threshold; rows_after 120 < "
        "data_quality.min_rows 200: add rows to the site's table or lower the threshold"
    )


def test_a_passing_site_a_disabled_gate_and_no_gate_accept() -> None:
    bad = {**GOOD, "duplicate_share": 0.5}
    for quality, spec in [
        (GOOD, QualitySpec()),
        (bad, QualitySpec(enabled=False)),
        (bad, None),
        ({}, QualitySpec(min_rows=10**9)),  # no summary (CSV data): nothing to judge
    ]:
        tel, why = read_telemetry(
            signed(telemetry(quality)), {"bank-a"}, VERIFIER, ROUND, RUN_KEY, spec
        )
        assert why is None and tel is not None and tel.quality == quality


def test_the_signature_covers_the_summary() -> None:
    content = signed(telemetry({**GOOD, "missing_share": 0.31}))
    content[TELEMETRY_QUALITY] = MetricRecord(GOOD)  # a summary made to pass the gate
    tel, why = read_telemetry(content, {"bank-a"}, VERIFIER, ROUND, RUN_KEY, QualitySpec())
    assert tel is None and why is not None and "signature does not verify" in why
