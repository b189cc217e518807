"""The privacy promises, end to end with the real ClientApp and round driver on the in-process engine.

What the coordinator receives in each mode, which keys each party holds, that a site's
kit cannot act for another site, that tampered ciphertexts are left out, and that the DP
accountant's epsilon is reported round by round.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.numpy import load_file

from clients.app import make_client_app
from coordinator.app import initial_arrays, load_coordinator_kit
from coordinator.driver import RoundDriver
from coordinator.protection.ckks import Ckks
from fedcore import carry
from fedcore import records as R
from fedcore.cli.runner import RunKits, provision_run_kits, write_site_configs
from fedcore.config import Scenario
from fedcore.engines.inprocess import InProcessGrid
from scheduling.random_selector import RandomSelector

SITES = ("bank-a", "bank-b", "bank-c", "bank-d")


pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture(scope="module")
def make_scenario(write_scenario: Callable[..., Scenario]) -> Callable[..., Scenario]:
    """Builds the four-bank scenario with the given ``privacy`` (one YAML mapping) and rounds."""

    def make(privacy: str, rounds: int = 1) -> Scenario:
        sizes = {"bank-a": 900, "bank-b": 500, "bank-c": 400, "bank-d": 300}
        sites = "\n".join(
            f"  - {{id: {s}, data: {{kind: generated, transactions: {n}, fraud_rate: 0.03, days: 20}}}}"
            for s, n in sizes.items()
        )
        text = textwrap.dedent(
            f"""\
            name: privacy-test
            seed: 3
            rounds: {rounds}
            task: {{hidden: 8, layers: 1}}
            training: {{local_epochs: 2, lr: 0.01}}
            scheduler: {{min_sites: 2}}
            privacy: {privacy}
            sites:
            """
        )
        return write_scenario(text + sites + "\n")

    return make


class SpyGrid(InProcessGrid):
    """The in-process grid, recording every reply the coordinator pulls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[Message] = []

    def pull_messages(self, message_ids: Any) -> Any:
        got = list(super().pull_messages(message_ids))
        self.replies.extend(got)
        return got


Tamper = Callable[[str, Message, Message], Message]


def tampering(app: ClientApp, tamper: Tamper) -> ClientApp:
    """A ClientApp whose replies pass through ``tamper(site_id, instruction, reply)`` (a hostile site)."""
    wrapper = ClientApp()

    def call(msg: Message, ctx: Context) -> Message:
        reply = app(msg, ctx)
        site = Path(str(ctx.node_config["site-config"])).stem
        return tamper(site, msg, reply)

    wrapper.train()(call)
    wrapper.evaluate()(call)
    wrapper.query("telemetry")(call)
    return wrapper


def run_driver(
    scenario: Scenario,
    out: Path,
    *,
    kits: RunKits | None,
    app: ClientApp | None = None,
    site_kits: dict[str, Path | str] | None = None,
    rounds: int | None = None,
) -> tuple[dict[str, Any], SpyGrid, RoundDriver]:
    paths = write_site_configs(scenario, out)
    kit_of: dict[str, Path | str] = dict(site_kits or (kits.sites if kits else {}))
    grid = SpyGrid(
        app or make_client_app(),
        {sid: {"site-config": str(p), "kit": str(kit_of.get(sid, ""))} for sid, p in paths.items()},
    )
    keys, ctx = load_coordinator_kit(kits.coordinator if kits else None)
    driver = RoundDriver(
        grid,
        scenario,
        RandomSelector(1.0, 2, scenario.seed),
        out,
        initial_arrays(scenario),
        rounds=rounds,
        wait_for_sites=1,
        registered_keys=keys,
        ckks_context=ctx,
    )
    return driver.run(), grid, driver


def site_model(out: Path, scenario: Scenario, site: str) -> dict[str, np.ndarray]:
    """A site's own copy of the global model (ckks), under the run's key."""
    import json

    key = json.loads((out / "federation.json").read_text())["run_key"]
    assert key.startswith(scenario.fingerprint())
    return dict(load_file(str(out / "sites" / site / "global" / key / "model.safetensors")))


@pytest.fixture(scope="module")
def ckks_run(
    tmp_path_factory: pytest.TempPathFactory,
    make_scenario: Callable[..., Scenario],
    module_task_identity: None,
) -> dict[str, Any]:
    """One CKKS round and the same round in plaintext, same seed."""
    base = tmp_path_factory.mktemp("ckks")
    ckks = make_scenario("{mode: ckks, ckks: {poly_modulus_degree: 4096, clip: 0.05}}")
    kits = provision_run_kits(ckks, base / "ckks")
    result, grid, driver = run_driver(ckks, base / "ckks", kits=kits)
    plain = make_scenario("{mode: plaintext}")
    run_driver(plain, base / "plain", kits=None)
    return {
        "scenario": ckks,
        "kits": kits,
        "result": result,
        "grid": grid,
        "driver": driver,
        "base": base,
        "plain_model": dict(load_file(str(base / "plain" / "model.safetensors"))),
    }


def test_ckks_coordinator_receives_only_ciphertext(ckks_run: dict[str, Any]) -> None:
    grid: SpyGrid = ckks_run["grid"]
    plain = ckks_run["plain_model"]
    train = [m for m in grid.replies if m.metadata.message_type == R.TRAIN]
    assert len(train) == len(SITES)
    for msg in train:
        assert not msg.content.array_records, "a train reply carried clear arrays"
        assert R.CKKS_UPDATE in msg.content.config_records
        parsed = R.TrainReply.from_content(msg.content)
        assert parsed.encrypted and parsed.length == sum(v.size for v in plain.values())
    # no reply of any kind carries a float vector as large as the model
    n = sum(v.size for v in plain.values())
    for msg in grid.replies:
        if msg.has_error():
            continue
        for rec in msg.content.array_records.values():
            assert sum(a.numpy().size for a in rec.values()) < n


def test_ckks_coordinator_context_holds_no_secret_key(ckks_run: dict[str, Any]) -> None:
    from secure.ckks import NoSecretKeyError

    driver: RoundDriver = ckks_run["driver"]
    ckks = driver.protection
    assert isinstance(ckks, Ckks) and not ckks.holds_global_model
    assert ckks.codec.context.is_private() is False
    agg = ckks.rounds[-1]
    with pytest.raises(NoSecretKeyError):
        ckks.codec.decrypt(agg.chunks, ckks.length, agg.count)
    assert ckks_run["result"]["model"] is None
    assert not (ckks_run["base"] / "ckks" / "model.safetensors").exists()
    privacy = ckks_run["result"]["privacy"]
    assert privacy["mode"] == "ckks" and privacy["ckks"]["coordinator_holds_secret_key"] is False


def test_ckks_aggregate_equals_plaintext_within_bound(ckks_run: dict[str, Any]) -> None:
    scenario: Scenario = ckks_run["scenario"]
    driver: RoundDriver = ckks_run["driver"]
    ckks = driver.protection
    assert isinstance(ckks, Ckks)
    agg = ckks.rounds[-1]
    bound = ckks.codec.error_bound(agg.count) / agg.weight
    plain = ckks_run["plain_model"]
    models = [site_model(ckks_run["base"] / "ckks", scenario, s) for s in SITES]
    for m in models[1:]:  # every site decrypted the same model
        for k in m:
            assert np.array_equal(m[k], models[0][k])
    diff = max(float(np.abs(models[0][k] - plain[k]).max()) for k in plain)
    assert diff <= bound + 1e-6, (diff, bound)
    # and the update was not trivially zero: the model moved from its start
    start = initial_arrays(scenario)
    assert max(float(np.abs(models[0][k] - start[k]).max()) for k in start) > 10 * bound


def flip_byte(chunks: list[bytes]) -> list[bytes]:
    c = bytearray(chunks[0])
    c[len(c) // 2] ^= 0x5A
    return [bytes(c), *chunks[1:]]


def truncate(chunks: list[bytes]) -> list[bytes]:
    return [chunks[0][: len(chunks[0]) // 3], *chunks[1:]]


@pytest.mark.parametrize(
    "damage", [flip_byte, truncate, lambda c: c[:0]], ids=["flip", "truncate", "drop"]
)
def test_tampered_ciphertext_is_rejected_and_round_goes_on(
    tmp_path: Path,
    damage: Callable[[list[bytes]], list[bytes]],
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario("{mode: ckks, ckks: {poly_modulus_degree: 4096, clip: 0.05}}")
    kits = provision_run_kits(scenario, tmp_path / "out")

    def tamper(site: str, msg: Message, reply: Message) -> Message:
        if site != "bank-c" or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        parsed = R.TrainReply.from_content(reply.content)
        assert parsed.encrypted is not None
        bad = R.TrainReply(
            {},
            parsed.num_examples,
            parsed.loss,
            parsed.seconds,
            parsed.site_id,
            encrypted=damage(parsed.encrypted),
            length=parsed.length,
            round=parsed.round,
        )
        content = bad.to_content()
        sig = R.read_signature(reply.content)
        assert sig is not None
        return Message(R.attach_signature(content, sig), reply_to=reply_stub(reply))

    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(make_client_app(), tamper)
    )
    first = result["rounds"][0]
    assert first["sites"] == ["bank-a", "bank-b", "bank-d"]
    reasons = " ".join(first["rejected"]["bank-c"])
    assert "invalid ciphertext" in reasons or "update has" in reasons
    # every site, bank-c included, applied the same aggregate of the three others
    models = [site_model(tmp_path / "out", scenario, s) for s in SITES]
    for m in models[1:]:
        assert all(np.array_equal(m[k], models[0][k]) for k in m)


def reply_stub(reply: Message) -> Message:
    """An instruction-shaped message so that ``Message(..., reply_to=)`` copies the reply's ids."""
    stub = Message(reply.content, reply.metadata.src_node_id, reply.metadata.message_type)
    stub.metadata.__dict__["_message_id"] = reply.metadata.reply_to_message_id
    stub.metadata.__dict__["_src_node_id"] = reply.metadata.dst_node_id
    stub.metadata.__dict__["_dst_node_id"] = reply.metadata.src_node_id
    stub.metadata.__dict__["_run_id"] = reply.metadata.run_id
    stub.metadata.__dict__["_group_id"] = reply.metadata.group_id
    return stub


def test_site_kit_cannot_serve_another_site(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    scenario = make_scenario("{mode: plaintext}")
    kits = provision_run_kits(scenario, tmp_path / "out")
    wrong: dict[str, Path | str] = dict(kits.sites)
    wrong["bank-b"] = kits.sites["bank-a"]
    result, _, _ = run_driver(scenario, tmp_path / "out", kits=kits, site_kits=wrong)
    first = result["rounds"][0]
    assert first["sites"] == ["bank-a", "bank-c", "bank-d"]
    reasons = " ".join(r for rs in first["rejected"].values() for r in rs)
    assert "belongs to site 'bank-a'" in reasons, reasons


def test_reply_signed_with_another_sites_key_is_refused(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    from secure.kit import load_kit, sign

    scenario = make_scenario("{mode: plaintext}")
    kits = provision_run_kits(scenario, tmp_path / "out")
    kit_a = load_kit(kits.sites["bank-a"], role="site")

    def forge(site: str, msg: Message, reply: Message) -> Message:
        """bank-d's node signs its train replies with bank-a's stolen key."""
        if site != "bank-d" or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        parsed = R.TrainReply.from_content(reply.content)
        _, cfg = R.read_instruction(msg.content)
        assert cfg is not None
        payload = R.signing_payload(R.TRAIN, "bank-d", parsed.round, cfg.run_key, parsed.digest())
        R.attach_signature(reply.content, sign(kit_a, payload))
        return reply

    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(make_client_app(), forge)
    )
    first = result["rounds"][0]
    assert first["sites"] == ["bank-a", "bank-b", "bank-c"]
    assert "does not verify with site 'bank-d'" in " ".join(first["rejected"]["bank-d"])


def test_telemetry_carried_by_a_train_reply_must_carry_its_sites_signature(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    from secure.kit import load_kit, sign

    scenario = make_scenario("{mode: plaintext}", rounds=2)
    kits = provision_run_kits(scenario, tmp_path / "out")
    kit_a = load_kit(kits.sites["bank-a"], role="site")

    def forge(site: str, msg: Message, reply: Message) -> Message:
        """bank-d's node signs the telemetry its train reply carries with bank-a's key."""
        if site != "bank-d" or reply.metadata.message_type != R.TRAIN or reply.has_error():
            return reply
        carried = carry.carried_telemetry(reply.content)
        asked = carry.read_telemetry_request(msg.content)
        _, cfg = R.read_instruction(msg.content)
        if asked != 2:  # the last round's train batch asks for no telemetry
            return reply
        assert carried is not None and cfg is not None
        tel = R.Telemetry.from_content(carried)
        payload = R.signing_payload(R.TELEMETRY, "bank-d", asked, cfg.run_key, tel.digest())
        carry.attach_telemetry(reply.content, R.attach_signature(carried, sign(kit_a, payload)))
        return reply

    result, _, _ = run_driver(
        scenario, tmp_path / "out", kits=kits, app=tampering(make_client_app(), forge)
    )
    first, second = result["rounds"]
    assert first["sites"] == ["bank-a", "bank-b", "bank-c", "bank-d"]
    assert (first["exchanges"], second["exchanges"]) == (2, 2)  # the last: train, final evaluate
    assert second["sites"] == ["bank-a", "bank-b", "bank-c"]
    (reason,) = second["rejected"]["bank-d"]
    assert "claims site 'bank-d'" in reason and "does not verify" in reason, reason


def test_unsigned_reply_is_refused_when_the_coordinator_has_a_kit(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    scenario = make_scenario("{mode: plaintext}")
    kits = provision_run_kits(scenario, tmp_path / "out")
    no_kit: dict[str, Path | str] = dict(kits.sites)
    no_kit["bank-c"] = ""  # bank-c runs without its kit: nothing it sends is signed
    result, _, _ = run_driver(scenario, tmp_path / "out", kits=kits, site_kits=no_kit)
    first = result["rounds"][0]
    assert first["sites"] == ["bank-a", "bank-b", "bank-d"]
    reasons = [r for rs in first["rejected"].values() for r in rs]
    assert any("claims site 'bank-c'" in r and "not signed" in r for r in reasons), reasons


def test_dp_epsilon_grows_per_round_and_matches_the_accountant(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    from fedcore.config import DpSpec
    from secure.dp import DpAccountant

    scenario = make_scenario(
        "{mode: plaintext, dp: {noise_multiplier: 1.0, clip_norm: 0.5}}", rounds=3
    )
    result, _, _ = run_driver(scenario, tmp_path / "out", kits=None)
    eps = [r["epsilon"] for r in result["rounds"]]
    assert eps[0] < eps[1] < eps[2]
    ref = DpAccountant(DpSpec(noise_multiplier=1.0, clip_norm=0.5), population_size=len(SITES))
    expected = [ref.step(len(SITES)) for _ in range(3)]
    assert eps == pytest.approx([round(e, 4) for e in expected], abs=1e-4)
    privacy = result["privacy"]
    assert privacy["epsilon"] == pytest.approx(expected[-1])
    assert privacy["delta"] == 1e-5


def test_secagg_aggregate_equals_plaintext_within_bound(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    secagg = make_scenario("{mode: secagg+, secagg: {num_shares: 3, reconstruction_threshold: 2}}")
    result, grid, _ = run_driver(secagg, tmp_path / "secagg", kits=None)
    assert result["rounds"][0]["sites"] == list(SITES)
    plain = make_scenario("{mode: plaintext}")
    run_driver(plain, tmp_path / "plain", kits=None)
    a = load_file(str(tmp_path / "secagg" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "model.safetensors"))
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert diff < 1e-4, diff
    # the coordinator never pulled a clear model from any site
    n = sum(v.size for v in b.values())
    for msg in grid.replies:
        if msg.has_error():
            continue
        for rec in msg.content.array_records.values():
            arrays = list(rec.values())
            if sum(x.numpy().size for x in arrays) >= n:
                assert all(x.numpy().dtype.kind in "iu" for x in arrays), (
                    "clear floats reached the coordinator"
                )


def test_ckks_run_resumes_from_its_encrypted_transcript(
    tmp_path: Path, make_scenario: Callable[..., Scenario]
) -> None:
    spec = "{mode: ckks, ckks: {poly_modulus_degree: 4096, clip: 0.05}}"
    one = make_scenario(spec, rounds=2)
    kits = provision_run_kits(one, tmp_path / "a")
    run_driver(one, tmp_path / "a", kits=kits, rounds=1)  # stops after round 1
    resumed, _, _ = run_driver(one, tmp_path / "a", kits=provision_run_kits(one, tmp_path / "a"))
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    straight_kits = provision_run_kits(one, tmp_path / "b")
    run_driver(one, tmp_path / "b", kits=straight_kits)
    m1 = site_model(tmp_path / "a", one, "bank-a")
    m2 = site_model(tmp_path / "b", one, "bank-a")
    # different keys, same quantized arithmetic: the models agree within the CKKS bound
    assert max(float(np.abs(m1[k] - m2[k]).max()) for k in m1) < 1e-5


@pytest.mark.parametrize(
    "privacy",
    [
        "{mode: ckks, ckks: {poly_modulus_degree: 4096, clip: 0.05, values_per_slot: 2}, dp: {noise_multiplier: 0.8, clip_norm: 0.05}}",
        "{mode: secagg+, secagg: {num_shares: 3, reconstruction_threshold: 2}, dp: {noise_multiplier: 0.8, clip_norm: 0.05}}",
    ],
    ids=["ckks+dp", "secagg+dp"],
)
def test_dp_combines_with_secure_modes(
    tmp_path: Path, privacy: str, make_scenario: Callable[..., Scenario]
) -> None:
    scenario = make_scenario(privacy, rounds=2)
    kits = provision_run_kits(scenario, tmp_path / "out")
    result, _, _ = run_driver(scenario, tmp_path / "out", kits=kits)
    eps = [r["epsilon"] for r in result["rounds"]]
    assert len(eps) == 2 and 0 < eps[0] < eps[1]
    assert result["privacy"]["epsilon"] == pytest.approx(eps[-1], abs=1e-4)
    assert all(r["sites"] == list(SITES) for r in result["rounds"])
