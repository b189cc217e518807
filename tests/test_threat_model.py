"""The threat model of docs/privacy.md, one test per cell: what each adversary can and cannot do, per mode.

Each test is named after its cell (``<mode>_<adversary>``). Where a test of its own already
proves a cell (tests/test_privacy_modes.py, tests/secure/), the test here runs the same
checks on the same fixtures rather than a copy of them.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from safetensors.numpy import load_file

from coordinator.app import initial_arrays
from coordinator.driver import RoundDriver
from coordinator.errors import FederationError
from coordinator.protection.ckks import Ckks
from coordinator.protection.dp import DifferentialPrivacy
from coordinator.protection.plaintext import Plaintext
from coordinator.protection.secagg import SecAggPlus
from fedcore import records as R
from fedcore.cli.runner import RunKits, provision_run_kits
from fedcore.config import DpSpec, Scenario
from tests.secure import test_secagg as secagg_unit
from tests.test_privacy_modes import (
    SITES,
    SpyGrid,
    ckks_run,
    make_scenario,
    reply_stub,
    run_driver,
    site_model,
    tampering,
)
from tests.test_privacy_modes import (
    test_ckks_coordinator_context_holds_no_secret_key as check_ckks_holds_no_secret_key,
)
from tests.test_privacy_modes import (
    test_ckks_coordinator_receives_only_ciphertext as check_ckks_receives_only_ciphertext,
)
from tests.test_privacy_modes import (
    test_reply_signed_with_another_sites_key_is_refused as check_forged_signature_is_refused,
)
from tests.test_privacy_modes import (
    test_secagg_aggregate_equals_plaintext_within_bound as check_secagg_mean_in_clear,
)
from tests.test_privacy_modes import (
    test_site_kit_cannot_serve_another_site as check_kit_serves_its_own_site_only,
)
from tests.test_privacy_modes import (
    test_tampered_ciphertext_is_rejected_and_round_goes_on as check_tampered_ciphertext,
)

__all__ = ["ckks_run", "make_scenario"]  # fixtures shared with tests/test_privacy_modes.py

pytestmark = pytest.mark.usefixtures("task_identity")

CKKS = "{mode: ckks, ckks: {poly_modulus_degree: 4096, clip: 0.05}}"
HOSTILE = "bank-c"


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def plain_run(
    tmp_path_factory: pytest.TempPathFactory,
    make_scenario: Callable[..., Scenario],
    module_task_identity: None,
) -> dict[str, Any]:
    """One plaintext round with kits (replies signed), every reply the coordinator pulled kept."""
    out = tmp_path_factory.mktemp("plain")
    scenario = make_scenario("{mode: plaintext}")
    kits = provision_run_kits(scenario, out)
    result, grid, driver = run_driver(scenario, out, kits=kits)
    return {"scenario": scenario, "out": out, "result": result, "grid": grid, "driver": driver}


def train_replies(grid: SpyGrid) -> dict[str, R.TrainReply]:
    """The train replies the coordinator pulled, parsed, by site."""
    parsed = [
        R.TrainReply.from_content(m.content)
        for m in grid.replies
        if m.metadata.message_type == R.TRAIN and not m.has_error()
    ]
    return {p.site_id: p for p in parsed}


def flat(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], np.float64).ravel() for k in sorted(arrays)])


def resigned(reply: R.TrainReply, site_kit: Path | str, run_key: str) -> R.RecordDict:
    """``reply`` as content signed with ``site_kit``'s node key (a site signing what it sends)."""
    from secure.kit import load_kit, sign

    payload = R.signing_payload(R.TRAIN, reply.site_id, reply.round, run_key, reply.digest())
    return R.attach_signature(reply.to_content(), sign(load_kit(site_kit, role="site"), payload))


def run_key_of(msg: Message) -> str:
    _, cfg = R.read_instruction(msg.content)
    assert cfg is not None
    return cfg.run_key


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(a[k], np.float64) - b[k]).max()) for k in a)


# --------------------------------------------------------------------------- row: the coordinator reads one site's update


def test_plaintext_coordinator_reads_one_site_update(plain_run: dict[str, Any]) -> None:
    replies = train_replies(plain_run["grid"])
    start = flat(initial_arrays(plain_run["scenario"]))
    assert sorted(replies) == sorted(SITES)
    for reply in replies.values():
        # the whole trained model, in clear floats: the update is model minus the global one
        update = flat(reply.arrays) - start
        assert reply.encrypted is None and update.size == start.size
        assert float(np.abs(update).max()) > 1e-4


def test_ckks_coordinator_cannot_read_one_site_update(ckks_run: dict[str, Any]) -> None:
    from secure.ckks import NoSecretKeyError

    check_ckks_receives_only_ciphertext(ckks_run)
    ckks = ckks_run["driver"].protection
    assert isinstance(ckks, Ckks)
    reply = train_replies(ckks_run["grid"])[HOSTILE]
    assert reply.encrypted
    with pytest.raises(NoSecretKeyError):
        ckks.codec.decrypt(reply.encrypted, ckks.length, 1)


def test_secagg_coordinator_cannot_read_one_site_update() -> None:
    secagg_unit.test_coordinator_never_receives_a_site_update_in_clear()


# --------------------------------------------------------------------------- row: the coordinator reads the global model


def test_plaintext_coordinator_reads_the_global_model(plain_run: dict[str, Any]) -> None:
    model = dict(load_file(str(plain_run["out"] / "model.safetensors")))
    driver: RoundDriver = plain_run["driver"]
    assert driver.protection.holds_global_model
    assert max_diff(model, driver.protection.global_arrays) == 0.0
    assert max_diff(model, initial_arrays(plain_run["scenario"])) > 1e-4  # it trained


def test_ckks_coordinator_cannot_read_the_global_model(ckks_run: dict[str, Any]) -> None:
    check_ckks_holds_no_secret_key(ckks_run)


def test_secagg_coordinator_reads_the_global_model(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # the unmasked mean is the coordinator's model.safetensors, equal to plaintext FedAvg's
    check_secagg_mean_in_clear(tmp_path, make_scenario)


def test_dp_coordinator_reads_only_a_noised_global_model() -> None:
    # what a clear-model mode (plaintext, secagg+) holds under dp: the uniform mean of the
    # clipped updates plus N(0, (z C / m)^2) per value, drawn from the OS CSPRNG
    size, m = 20_000, 4
    spec = DpSpec(noise_multiplier=1.0, clip_norm=0.4)
    mean = {"w": np.full(size, 0.25, np.float32)}
    dp = DifferentialPrivacy(Plaintext(mean), spec, population_size=m)
    held = dp.noise.on_mean(mean, m)
    noise = held["w"].astype(np.float64) - 0.25
    std = 1.0 * 0.4 / m  # 0.1
    assert float(noise.std()) == pytest.approx(std, rel=6 / math.sqrt(2 * size))
    assert abs(float(noise.mean())) < 6 * std / math.sqrt(size)


# --------------------------------------------------------------------------- row: a site reads another site's update (coordinator helps)


def test_plaintext_site_reads_another_site_update_via_the_coordinator(
    plain_run: dict[str, Any],
) -> None:
    # whatever the coordinator passes on: the reply's content parses without any key
    msg = next(
        m
        for m in plain_run["grid"].replies
        if m.metadata.message_type == R.TRAIN and not m.has_error()
    )
    forwarded = R.TrainReply.from_content(msg.content)
    assert forwarded.arrays and forwarded.encrypted is None
    model = flat(forwarded.arrays)
    assert np.all(np.isfinite(model))
    assert float(np.abs(model - flat(initial_arrays(plain_run["scenario"]))).max()) > 1e-4


def test_ckks_site_reads_another_site_update_via_the_coordinator(ckks_run: dict[str, Any]) -> None:
    # every site holds the consortium's one secret key: bank-a decrypts bank-c's update
    from secure import kitfiles
    from secure.ckks import context_from_bytes
    from secure.codecs import make_codec

    scenario: Scenario = ckks_run["scenario"]
    kits: RunKits = ckks_run["kits"]
    ckks = ckks_run["driver"].protection
    assert isinstance(ckks, Ckks)
    secret = context_from_bytes(
        (Path(kits.sites["bank-a"]) / kitfiles.CKKS_SECRET).read_bytes(), expect_secret=True
    )
    codec = make_codec(scenario.privacy, secret, len(SITES))
    replies = train_replies(ckks_run["grid"])
    stolen = codec.decrypt(replies[HOSTILE].encrypted or [], ckks.length, 1)
    assert np.all(np.isfinite(stolen)) and float(np.abs(stolen).max()) > 1e-4
    # and it is bank-c's own contribution: the four decrypted updates add up to the aggregate
    parts = [codec.decrypt(replies[s].encrypted or [], ckks.length, 1) for s in SITES]
    agg = ckks.rounds[-1]
    total = codec.decrypt(agg.chunks, ckks.length, agg.count)
    assert float(np.abs(sum(parts) - total).max()) <= codec.error_bound(len(SITES))


def test_secagg_site_cannot_read_another_site_update() -> None:
    # what a colluding coordinator can hand a site: masked vectors only, and one site holds
    # one share of another's secrets, below the reconstruction threshold
    spec = secagg_unit.SPEC
    assert spec.reconstruction_threshold >= 2
    secagg_unit.test_coordinator_never_receives_a_site_update_in_clear()


# --------------------------------------------------------------------------- row: inference about one record from the final model


def test_dp_inference_about_one_record_is_bounded_by_the_reported_epsilon(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # packed CKKS with dp: the epsilon reported is the accountant's over the sensitivity
    # clip_norm + sqrt(d) * (step / 2), the quantization term included
    from secure.dp import DpAccountant

    scenario = make_scenario(
        "{mode: ckks, ckks: {poly_modulus_degree: 4096, clip: 0.05}, "
        "dp: {noise_multiplier: 0.8, clip_norm: 0.05}}",
        rounds=2,
    )
    kits = provision_run_kits(scenario, tmp_path / "out")
    result, _, driver = run_driver(scenario, tmp_path / "out", kits=kits)
    dp = driver.protection
    assert isinstance(dp, DifferentialPrivacy) and isinstance(dp.inner, Ckks)
    term = math.sqrt(dp.inner.length) * dp.inner.codec.error_bound(1)
    assert dp.quantization == pytest.approx(term) and term > 0
    assert scenario.privacy.dp is not None
    ref = DpAccountant(scenario.privacy.dp, population_size=len(SITES), quantization=term)
    without = DpAccountant(scenario.privacy.dp, population_size=len(SITES))
    expected = [ref.step(len(SITES)) for _ in range(2)]
    eps = [r["epsilon"] for r in result["rounds"]]
    assert eps == pytest.approx([round(e, 4) for e in expected], abs=1e-4)
    assert result["privacy"]["epsilon"] == pytest.approx(expected[-1])
    assert result["privacy"]["quantization_term"] == pytest.approx(term)
    assert result["privacy"]["sensitivity"] == pytest.approx(0.05 + term)
    assert expected[-1] > without.step(len(SITES)) and math.isfinite(expected[-1])


# --------------------------------------------------------------------------- row: a site sends garbage


def test_plaintext_garbage_reply_is_refused(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    scenario = make_scenario("{mode: plaintext}")
    kits = provision_run_kits(scenario, tmp_path / "out")

    def garbage(site: str, msg: Message, reply: Message) -> Message:
        """bank-c sends NaN weights and a wrong shape, signed with its own key."""
        if site != HOSTILE or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        parsed = R.TrainReply.from_content(reply.content)
        names = sorted(parsed.arrays)
        arrays = dict(parsed.arrays)
        arrays[names[0]] = np.full_like(arrays[names[0]], np.nan)
        arrays[names[-1]] = np.zeros(3, arrays[names[-1]].dtype)
        bad = R.TrainReply(
            arrays, parsed.num_examples, parsed.loss, parsed.seconds, site, round=parsed.round
        )
        content = resigned(bad, kits.sites[site], run_key_of(msg))
        return Message(content, reply_to=reply_stub(reply))

    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(_client_app(), garbage)
    )
    first = result["rounds"][0]
    assert first["sites"] == [s for s in SITES if s != HOSTILE]
    reasons = " ".join(first["rejected"][HOSTILE])
    assert "non-finite" in reasons or "nan" in reasons.lower(), reasons
    assert "shape" in reasons, reasons


def test_ckks_garbage_reply_is_refused(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    from tests.test_privacy_modes import flip_byte

    check_tampered_ciphertext(tmp_path, flip_byte, make_scenario)


def test_secagg_garbage_reply_is_refused() -> None:
    # a reply that is no fit reply, and one whose values are not finite: the site drops out
    secagg_unit.test_a_train_reply_without_legacy_records_fails_at_the_site_with_a_clear_reason()
    secagg_unit.test_non_finite_values_fail_at_the_site_instead_of_poisoning_the_sum()


# --------------------------------------------------------------------------- row: a site sends a finite but poisoned update


def _client_app() -> Any:
    from clients.app import make_client_app

    return make_client_app()


def poisoning_plaintext(kits: RunKits | None, shift: float) -> Callable[..., Message]:
    """bank-c adds ``shift`` to every weight of its trained model, and signs what it sends."""

    def poison(site: str, msg: Message, reply: Message) -> Message:
        if site != HOSTILE or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        parsed = R.TrainReply.from_content(reply.content)
        arrays = {k: (v + np.asarray(shift, v.dtype)) for k, v in parsed.arrays.items()}
        bad = R.TrainReply(
            arrays, parsed.num_examples, parsed.loss, parsed.seconds, site, round=parsed.round
        )
        if kits is None:
            return Message(bad.to_content(), reply_to=reply_stub(reply))
        return Message(resigned(bad, kits.sites[site], run_key_of(msg)), reply_to=reply_stub(reply))

    return poison


def with_aggregation(scenario: Scenario, **fields: Any) -> Scenario:
    """``scenario`` with its ``aggregation`` section set to ``fields``."""
    from fedcore.config.aggregation import AggregationSpec

    return scenario.model_copy(update={"aggregation": AggregationSpec(**fields)})


def poisoned_plaintext_run(
    tmp_path: Path, make_scenario: Callable[..., Scenario], **aggregation: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(honest model, poisoned model, poisoned run's result) of one plaintext round."""
    scenario = with_aggregation(make_scenario("{mode: plaintext}"), **aggregation)
    run_driver(scenario, tmp_path / "honest", kits=None)
    result, _, _ = run_driver(
        scenario,
        tmp_path / "poisoned",
        kits=None,
        app=tampering(_client_app(), poisoning_plaintext(None, 5.0)),
    )
    honest = dict(load_file(str(tmp_path / "honest" / "model.safetensors")))
    poisoned = dict(load_file(str(tmp_path / "poisoned" / "model.safetensors")))
    return honest, poisoned, result


def test_plaintext_fedavg_poisoned_update_gets_in(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    honest, poisoned, result = poisoned_plaintext_run(tmp_path, make_scenario)
    assert result["rounds"][0]["sites"] == list(SITES)  # nothing refused it
    # bank-c's weight in the mean (400 of 2100 examples) times its shift of 5: about 0.95
    assert max_diff(poisoned, honest) > 0.5


def test_plaintext_robust_rule_bounds_a_poisoned_update(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    honest, poisoned, _ = poisoned_plaintext_run(tmp_path, make_scenario, rule="median")
    # the coordinate-wise median of four values, one of them shifted by 5, stays between
    # the honest ones: the hostile site moves it by less than the honest sites' spread
    assert max_diff(poisoned, honest) < 0.1


def poisoning_ckks(kits: RunKits, scenario: Scenario, value: float) -> Callable[..., Message]:
    """bank-c encrypts ``value`` in every place of its update (skipping any clip), signed."""
    from secure import kitfiles
    from secure.ckks import context_from_bytes
    from secure.codecs import make_codec

    secret = context_from_bytes(
        (Path(kits.sites[HOSTILE]) / kitfiles.CKKS_SECRET).read_bytes(), expect_secret=True
    )
    codec = make_codec(scenario.privacy, secret, len(SITES))

    def poison(site: str, msg: Message, reply: Message) -> Message:
        if site != HOSTILE or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        parsed = R.TrainReply.from_content(reply.content)
        assert parsed.length is not None
        bad = R.TrainReply(
            {},
            parsed.num_examples,
            parsed.loss,
            parsed.seconds,
            site,
            encrypted=codec.encrypt(np.full(parsed.length, value)),
            length=parsed.length,
            round=parsed.round,
        )
        return Message(resigned(bad, kits.sites[site], run_key_of(msg)), reply_to=reply_stub(reply))

    return poison


def test_ckks_poisoned_update_moves_the_model(
    tmp_path: Path, make_scenario: Callable[..., Scenario], ckks_run: dict[str, Any]
) -> None:
    # without site_clip nothing but the packing clip (0.05 per value) bounds what bank-c adds
    scenario = make_scenario(CKKS)
    kits = provision_run_kits(scenario, tmp_path / "out")
    result, _, _ = run_driver(
        scenario,
        tmp_path / "out",
        kits=kits,
        app=tampering(_client_app(), poisoning_ckks(kits, scenario, 0.05)),
    )
    assert result["rounds"][0]["sites"] == list(SITES)
    honest = site_model(ckks_run["base"] / "ckks", ckks_run["scenario"], "bank-a")
    poisoned = site_model(tmp_path / "out", scenario, "bank-a")
    # bank-c's weight (400 of 2100 examples, relative weights) times 0.05: about 0.0095 per value
    assert max_diff(poisoned, honest) > 0.005


def test_ckks_site_clip_bounds_a_poisoned_update(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # with site_clip every honest site refuses an aggregate whose mean update is longer
    # than site_clip (plus the CKKS error) and keeps the model it had
    scenario = with_aggregation(make_scenario(CKKS, rounds=2), site_clip=0.01)
    kits = provision_run_kits(scenario, tmp_path / "out")
    with pytest.raises(FederationError, match="a site did not clip its update") as refused:
        run_driver(
            scenario,
            tmp_path / "out",
            kits=kits,
            app=tampering(_client_app(), poisoning_ckks(kits, scenario, 0.05)),
        )
    # every site, bank-c's own client included, refused round 1's aggregate
    for site in SITES:
        assert f"{site}: site error: ValueError: the encrypted aggregate of round 1" in str(
            refused.value
        )
    start = initial_arrays(scenario)
    model = site_model(tmp_path / "out", scenario, "bank-a")
    assert max_diff(model, start) == 0.0  # the poisoned aggregate was never applied


def test_secagg_poisoned_update_moves_the_model() -> None:
    # without site_clip a finite update within the clipping range is summed like any other
    from secure.secagg import fit_reply_content

    shifted = [a + np.float32(3.0) for a in secagg_unit.site_arrays(4)]
    sites = secagg_unit.Sites(
        raw_reply={
            4: lambda msg: Message(
                fit_reply_content(shifted, secagg_unit.site_weight(4), {}), reply_to=msg
            )
        }
    )
    out = secagg_unit.run(secagg_unit.make_grid(sites))
    assert not out.dropouts  # nothing refused it
    honest = secagg_unit.exact_mean(range(5))
    w = [secagg_unit.site_weight(i) for i in range(5)]
    expected_shift = 3.0 * w[4] / sum(w)  # bank-4's share of the weights times its shift
    for got, want in zip(out.arrays, honest, strict=True):
        assert np.allclose(got - want, expected_shift, atol=1e-3)


def test_secagg_site_clip_bounds_a_poisoned_update(
    make_scenario: Callable[..., Scenario],
) -> None:
    # the coordinator unmasks only the mean; with site_clip it refuses a mean update longer
    # than site_clip plus the quantization bound, which a site that skipped the clip makes
    scenario = make_scenario("{mode: secagg+}")
    start = initial_arrays(scenario)
    secagg = SecAggPlus(scenario.privacy, start, site_clip=0.1)
    size = sum(v.size for v in start.values())
    honest = {k: v + np.float32(0.05 / math.sqrt(size)) for k, v in start.items()}  # norm 0.05
    secagg.check_clipped(1, honest, 1e-6)
    poisoned = {k: v + np.float32(0.5 / math.sqrt(size)) for k, v in start.items()}  # norm 0.5
    with pytest.raises(FederationError, match="did not clip"):
        secagg.check_clipped(1, poisoned, 1e-6)
    # and a real SecAgg+ round with a site that does not clip is refused
    from tests.test_site_clip import test_secagg_round_with_a_site_that_does_not_clip_is_refused

    test_secagg_round_with_a_site_that_does_not_clip_is_refused()


# --------------------------------------------------------------------------- row: a site impersonates another


def test_plaintext_site_cannot_impersonate_another(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    check_forged_signature_is_refused(tmp_path / "forged", make_scenario)
    check_kit_serves_its_own_site_only(tmp_path / "kit", make_scenario)


def test_ckks_site_cannot_impersonate_another(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    from secure.kit import load_kit, sign

    scenario = make_scenario(CKKS)
    kits = provision_run_kits(scenario, tmp_path / "out")
    kit_a = load_kit(kits.sites["bank-a"], role="site")

    def forge(site: str, msg: Message, reply: Message) -> Message:
        """bank-d's node signs its encrypted update with bank-a's stolen key."""
        if site != "bank-d" or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        parsed = R.TrainReply.from_content(reply.content)
        payload = R.signing_payload(
            R.TRAIN, "bank-d", parsed.round, run_key_of(msg), parsed.digest()
        )
        R.attach_signature(reply.content, sign(kit_a, payload))
        return reply

    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(_client_app(), forge)
    )
    first = result["rounds"][0]
    assert first["sites"] == ["bank-a", "bank-b", "bank-c"]
    assert "does not verify with site 'bank-d'" in " ".join(first["rejected"]["bank-d"])


# --------------------------------------------------------------------------- row: a replayed reply


def replaying(site_to_replay: str) -> Callable[[str, Message, Message], Message]:
    """``site_to_replay`` answers round 2's train instruction with its (signed) round-1 reply."""
    kept: dict[str, Any] = {}

    def replay(site: str, msg: Message, reply: Message) -> Message:
        if site != site_to_replay or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        if "content" not in kept:
            kept["content"] = reply.content
            return reply
        return Message(kept["content"], reply_to=reply_stub(reply))

    return replay


@pytest.mark.parametrize("mode", ["{mode: plaintext}", CKKS], ids=["plaintext", "ckks"])
def test_replayed_reply_is_refused(
    tmp_path: Path, make_scenario: Callable[..., Scenario], mode: str
) -> None:
    scenario = make_scenario(mode, rounds=2)
    kits = provision_run_kits(scenario, tmp_path / "out")
    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(_client_app(), replaying("bank-d"))
    )
    first, second = result["rounds"]
    assert "bank-d" in first["sites"]
    assert "bank-d" not in second["sites"]
    reasons = " ".join(second["rejected"]["bank-d"])
    assert "does not verify" in reasons or "round" in reasons, reasons


# --------------------------------------------------------------------------- row: a network attacker


def _pump(src: socket.socket, dst: socket.socket, seen: list[bytes]) -> None:
    """Copy bytes from ``src`` to ``dst``, keeping a copy (what an attacker on the path sees)."""
    try:
        while chunk := src.recv(65536):
            seen.append(chunk)
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _tls_server(
    listener: socket.socket, cert: Path, key: Path, got: list[bytes]
) -> threading.Thread:
    """Accept one TLS connection on ``listener``, read one message into ``got``, answer ``ok``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                got.append(tls.recv(65536))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client refused the handshake

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_network_attacker_cannot_read_or_impersonate_the_coordinator(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # real TLS on 127.0.0.1 with the kits `fedcore provision` writes: a site trusts the
    # consortium CA only (as its SuperNode does with --root-certificates)
    from secure.kit import load_kit

    scenario = make_scenario("{mode: plaintext}")
    ours = provision_run_kits(scenario, tmp_path / "ours")
    theirs = provision_run_kits(scenario, tmp_path / "theirs")  # another CA: an impostor
    coordinator = load_kit(ours.coordinator, role="coordinator")
    impostor = load_kit(theirs.coordinator, role="coordinator")
    site_trust = ssl.create_default_context(cafile=str(load_kit(ours.sites["bank-a"]).ca_cert))
    secret = b"bank-a's update: " + np.arange(64, dtype=np.float32).tobytes()

    # 1. on the path between the site and the coordinator, the attacker sees no plaintext
    got: list[bytes] = []
    seen: list[bytes] = []
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_server(("127.0.0.1", 0)) as relay,
    ):
        thread = _tls_server(server, coordinator.cert, coordinator.key, got)
        with socket.create_connection(relay.getsockname()[:2]) as raw:
            inbound, _ = relay.accept()
            outbound = socket.create_connection(server.getsockname()[:2])
            pumps = [
                threading.Thread(target=_pump, args=(inbound, outbound, seen), daemon=True),
                threading.Thread(target=_pump, args=(outbound, inbound, seen), daemon=True),
            ]
            for p in pumps:
                p.start()
            with site_trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                tls.sendall(secret)
                assert tls.recv(16) == b"ok"
        thread.join(timeout=10)
        for p in pumps:
            p.join(timeout=10)
    assert got == [secret]  # the coordinator got it
    wire = b"".join(seen)
    assert len(wire) > len(secret) and secret[:16] not in wire and secret[-32:] not in wire

    # 2. an impostor coordinator (a certificate of another CA) fails the site's handshake
    with socket.create_server(("127.0.0.1", 0)) as fake:
        thread = _tls_server(fake, impostor.cert, impostor.key, [])
        with socket.create_connection(fake.getsockname()[:2]) as raw:
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                site_trust.wrap_socket(raw, server_hostname="127.0.0.1")
        thread.join(timeout=10)


def test_secagg_site_cannot_impersonate_another(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # a node's site is what its signed telemetry says (SuperLink authenticates the node's
    # key in a deployment); bank-d's node claiming bank-d with bank-a's key never takes part
    from secure.kit import load_kit, sign

    scenario = make_scenario(
        "{mode: secagg+, secagg: {num_shares: 2, reconstruction_threshold: 2}}"
    )
    kits = provision_run_kits(scenario, tmp_path / "out")
    kit_a = load_kit(kits.sites["bank-a"], role="site")

    def forge(site: str, msg: Message, reply: Message) -> Message:
        if site != "bank-d" or reply.metadata.message_type != R.TELEMETRY or reply.has_error():
            return reply
        tel = R.Telemetry.from_content(reply.content)
        round_, run_key, _ = R.read_telemetry_instruction(msg.content)
        payload = R.signing_payload(R.TELEMETRY, "bank-d", round_, run_key, tel.digest())
        R.attach_signature(reply.content, sign(kit_a, payload))
        return reply

    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(_client_app(), forge)
    )
    first = result["rounds"][0]
    assert first["sites"] == ["bank-a", "bank-b", "bank-c"]
    assert "does not verify" in json.dumps(result), json.dumps(first)[:2000]


def test_network_attacker_cannot_reach_the_control_api() -> None:
    # Flower's Control API (start runs, register nodes) has no authentication of its own:
    # on the address sites reach only the Fleet API answers; everything else is loopback
    from tests.fedcore.engines.test_approved_apps import (
        test_the_gate_serves_the_fleet_api_only_away_from_loopback as check_gate,
    )

    for path in ("/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs"):
        check_gate(path, False)
    check_gate("/v1/fleet/pull-messages", True)


# --------------------------------------------------------------------------- row: a site runs code its operator did not approve


def test_site_refuses_an_unapproved_app_bundle(tmp_path: Path) -> None:
    # a site's worker runs only the app bundle of its own fedcore (or those approved_apps
    # pins): a bundle changed by one line is refused, naming its digest and the fix
    from tests.fedcore.engines.test_approved_apps import (
        test_approval_refuses_any_other_bundle_and_says_how_to_approve_it as check_approval,
    )

    check_approval(tmp_path)


def test_secagg_replayed_reply_corrupts_the_mean() -> None:
    # SecAgg+'s protocol replies carry no fedcore signature: a site that answers round 2's
    # masked-vector stage with its round-1 vector is summed, and its old masks, which no
    # longer cancel, make the mean garbage (site_clip would refuse such a round as too long)
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    kept: dict[str, Any] = {}

    def keep(cfg: Any, content: Any) -> None:
        kept.update(dict(cfg.items()))

    def replay(cfg: Any, content: Any) -> None:
        for key in list(cfg.keys()):
            del cfg[key]
        cfg.update(kept)

    grid = secagg_unit.make_grid(secagg_unit.Sites())
    where = (secagg_unit.node(3), Stage.COLLECT_MASKED_VECTORS)
    grid.tamper[where] = keep
    secagg_unit.assert_mean_of(secagg_unit.run(grid), range(5))  # round 1 is exact
    grid.tamper[where] = replay
    replayed = secagg_unit.run(grid)
    assert not replayed.dropouts  # nothing refused it
    exact = secagg_unit.exact_mean(range(5))
    error = max(
        float(np.abs(got - want).max()) for got, want in zip(replayed.arrays, exact, strict=True)
    )
    assert error > 1000 * replayed.error_bound, (error, replayed.error_bound)


# --------------------------------------------------------------------------- row: inference without dp


def test_plaintext_final_model_reveals_a_change_in_one_sites_data(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # without dp the final model is a deterministic function of every site's data: the
    # same data gives the same model bit for bit, and changing one site's data changes it
    scenario = make_scenario("{mode: plaintext}")
    sites = list(scenario.sites)
    last = sites[-1]
    changed = last.model_copy(
        update={"data": last.data.model_copy(update={"transactions": last.data.transactions + 1})}
    )
    other = scenario.model_copy(update={"sites": [*sites[:-1], changed]})
    models = []
    for name, sc in (("a", scenario), ("b", scenario), ("c", other)):
        run_driver(sc, tmp_path / name, kits=None)
        models.append(dict(load_file(str(tmp_path / name / "model.safetensors"))))
    assert max_diff(models[0], models[1]) == 0.0
    assert max_diff(models[0], models[2]) > 1e-6


def test_ckks_final_model_is_the_plaintext_one(ckks_run: dict[str, Any]) -> None:
    # what the sites decrypt is plaintext FedAvg's model within the codec's bound, so it
    # reveals what the plaintext model does
    from tests.test_privacy_modes import test_ckks_aggregate_equals_plaintext_within_bound

    test_ckks_aggregate_equals_plaintext_within_bound(ckks_run)


def test_secagg_final_model_is_the_plaintext_one(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    check_secagg_mean_in_clear(tmp_path, make_scenario)


def evaluate_reply_of(grid: SpyGrid, site: str) -> Message:
    """``site``'s evaluate reply among those the coordinator pulled."""
    for msg in grid.replies:
        if msg.metadata.message_type == R.EVALUATE and not msg.has_error():
            if R.EvalReply.from_content(msg.content).site_id == site:
                return msg
    raise AssertionError(f"no evaluate reply from {site}")


def test_replayed_or_forged_evaluation_is_left_out(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    # evaluations are signed over kind, site, evaluated round, run and digest: bank-d's
    # evaluation of another run, replayed, and bank-c's evaluation signed with bank-a's
    # key are both left out of the pooled metrics, with the reason in the round's record
    from secure.kit import load_kit, sign

    scenario = make_scenario("{mode: plaintext}")
    kits = provision_run_kits(scenario, tmp_path / "a")
    _, grid_a, _ = run_driver(scenario, tmp_path / "a", kits=kits)
    old = evaluate_reply_of(grid_a, "bank-d").content
    kit_a = load_kit(kits.sites["bank-a"], role="site")

    def hostile(site: str, msg: Message, reply: Message) -> Message:
        if reply.metadata.message_type != R.EVALUATE or reply.has_error():
            return reply
        if site == "bank-d":
            return Message(old, reply_to=reply_stub(reply))
        if site == HOSTILE:
            ev = R.EvalReply.from_content(reply.content)
            _, cfg = R.read_instruction(msg.content)
            assert cfg is not None
            payload = R.signing_payload(R.EVALUATE, site, cfg.round, cfg.run_key, ev.digest())
            R.attach_signature(reply.content, sign(kit_a, payload))
        return reply

    result, _, _ = run_driver(
        scenario, tmp_path / "b", kits=kits, app=tampering(_client_app(), hostile)
    )
    problems = result["rounds"][-1]["eval_problems"]
    assert set(problems) >= {"bank-d", HOSTILE}, problems
    assert "does not verify" in " ".join(problems["bank-d"]), problems
    assert "does not verify" in " ".join(problems[HOSTILE]), problems
