"""A hostile coordinator can neither lower a site's privacy nor fill its disk.

The round config a coordinator sends names the round's privacy mode and DP settings. A
site holds them to its own policy (``privacy: {modes: [...], require_dp: ...}`` in its site
file) before it trains, evaluates, exports or takes part in SecAgg+: a CKKS site asked for
plaintext or SecAgg+ refuses, writes nothing, names the mode asked, the modes it accepts
and its site file, and still serves the rounds it accepts. ``fedcore run`` pins each
simulated site to the scenario's own mode, so simulations are unaffected. However many
task specs a coordinator names, the site keeps a bounded number of cached graphs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from clients.app import make_client_app
from coordinator.app import initial_arrays, load_coordinator_kit
from coordinator.driver import RoundDriver
from coordinator.errors import FederationError
from fedcore import records as R
from fedcore.config import (
    ConfigError,
    DpSpec,
    GeneratedData,
    PrivacySpec,
    Scenario,
    SiteConfig,
    SitePrivacy,
    SiteSpec,
    dump_site_config,
    load_scenario,
    load_site_config,
)
from fedcore.engines.inprocess import InProcessGrid, node_id_for
from fedcore.site_paths import STATE_DIR_KEY
from scheduling.random_selector import RandomSelector

SITE = "bank-a"
CKKS = {"mode": "ckks", "ckks": {"poly_modulus_degree": 4096, "clip": 0.05}}
DP = {"noise_multiplier": 1.0, "clip_norm": 0.1}
REPO = Path(__file__).resolve().parents[2]


def make_scenario(privacy: dict[str, Any], sites: tuple[str, ...] = (SITE,)) -> Scenario:
    """Small generated banks, one round; ``privacy`` is the scenario's section."""
    data = GeneratedData(transactions=300, fraud_rate=0.05, days=10)
    return Scenario.model_validate(
        {
            "name": "policy",
            "seed": 5,
            "rounds": 1,
            "sites": [SiteSpec(id=s, data=data) for s in sites],
            "task": {"hidden": 8, "layers": 1},
            "training": {"local_epochs": 1},
            "privacy": privacy,
            "scheduler": {"min_sites": len(sites)},
            "export": {"tolerance": 1.0},
        }
    )


def state_digest(folder: Path) -> dict[str, str]:
    """Every file (SHA-256) and folder under ``folder``, by relative path (``{}``: none)."""
    if not folder.exists():
        return {}
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@dataclass
class Site:
    """One site behind the in-process grid: its scenario, site file, state and kit."""

    scenario: Scenario
    site_file: Path
    state: Path
    grid: InProcessGrid
    base: dict[str, np.ndarray]

    def config(self, privacy: PrivacySpec, round_: int = 1) -> R.RoundConfig:
        return R.RoundConfig(
            round_,
            self.scenario.seed,
            self.scenario.task,
            self.scenario.training,
            privacy,
            run_key=f"{self.scenario.fingerprint()}-0badc0de",
            max_sites=1,
            export=self.scenario.export,
        )

    def ask(self, content: RecordDict, mtype: str) -> Message:
        msg = Message(content, node_id_for(SITE), mtype, group_id="1")
        (reply,) = self.grid.send_and_receive([msg])
        return reply


def make_site(folder: Path, scenario: Scenario, policy: SitePrivacy, kit: str = "") -> Site:
    """A site whose site file holds ``policy``, its state directory under ``folder``."""
    site_file = folder / f"{SITE}.yaml"
    cfg = SiteConfig.from_scenario(scenario, SITE).model_copy(update={"privacy": policy})
    dump_site_config(cfg, site_file)
    state = folder / "state"
    node = {"site-config": str(site_file), STATE_DIR_KEY: str(state), "kit": kit}
    grid = InProcessGrid(make_client_app(), {SITE: node})
    return Site(scenario, site_file, state, grid, initial_arrays(scenario))


@pytest.fixture(scope="module")
def ckks_kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, str]:
    """A CKKS scenario and its site's provisioned kit (CKKS secret context, node key)."""
    from fedcore.cli.runner import provision_run_kits

    scenario = make_scenario(CKKS)
    kits = provision_run_kits(scenario, tmp_path_factory.mktemp("kits"))
    return scenario, str(kits.sites[SITE])


@pytest.fixture
def ckks_site(
    tmp_path: Path, ckks_kit: tuple[Scenario, str], task_identity: None
) -> Iterator[Site]:
    """A CKKS site as ``fedcore run`` writes it (it accepts ckks only), nothing done yet."""
    scenario, kit = ckks_kit
    yield make_site(tmp_path, scenario, SiteConfig.from_scenario(scenario, SITE).privacy, kit)


def ckks_train(site: Site) -> Message:
    cfg = site.config(site.scenario.privacy)
    return site.ask(R.ckks_instruction(cfg, R.CkksAggregates(0), site.base), R.TRAIN)


def secagg_setup() -> RecordDict:
    """A valid SecAgg+ setup stage message (three sites)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    setup: dict[str, Any] = {
        "stage": "setup",
        "sample_num": 3,
        "share_num": 3,
        "threshold": 2,
        "clipping_range": 8.0,
        "target_range": 2**22,
        "mod_range": 2**32,
        "max_weight": 1000.0,
    }
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(setup)})


def secagg_fit(site: Site) -> RecordDict:
    """A SecAgg+ legacy fit instruction, as the coordinator's workflow sends it."""
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from clients.protection.secagg import NAMES_KEY

    cfg = site.config(PrivacySpec(mode="secagg+"))
    names = sorted(site.base)
    config: dict[str, Any] = {**dict(cfg.to_record()), NAMES_KEY: json.dumps(names)}
    fitins = FitIns(ndarrays_to_parameters([site.base[n] for n in names]), config)
    return compat.fitins_to_recorddict(fitins, keep_input=True)


def refused(reply: Message) -> str:
    assert reply.has_error(), "expected the site to refuse, found a reply"
    return reply.error.reason or ""


# --------------------------------------------------------------------------- the policy


def test_a_site_file_without_privacy_accepts_ckks_and_secagg_only(tmp_path: Path) -> None:
    path = tmp_path / "bank-a.yaml"
    path.write_text("id: bank-a\ndata: {kind: generated, transactions: 300}\n")
    policy = load_site_config(path).privacy
    assert policy.modes == ["ckks", "secagg+"] and policy.require_dp is False
    assert policy.refusal(PrivacySpec(mode="ckks")) == ""
    assert policy.refusal(PrivacySpec(mode="secagg+", dp=DpSpec(**DP))) == ""
    why = policy.refusal(PrivacySpec(mode="plaintext"), str(path))
    assert why.startswith("refused a round in privacy mode 'plaintext'")
    assert f"this site accepts only ckks, secagg+ (privacy.modes in the site config {path})" in why


def test_require_dp_and_the_mode_are_both_named() -> None:
    policy = SitePrivacy(modes=["ckks"], require_dp=True)
    assert policy.refusal(PrivacySpec(mode="ckks", dp=DpSpec(**DP))) == ""
    why = policy.refusal(PrivacySpec(mode="plaintext"), "/srv/bank-a.yaml")
    assert "privacy mode 'plaintext': this site accepts only ckks" in why
    assert "without differential privacy: this site requires it (privacy.require_dp in " in why
    assert why.count("/srv/bank-a.yaml") == 2 and "set require_dp: false there" in why


def test_a_bad_privacy_section_is_named_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "bank-a.yaml"
    path.write_text("id: bank-a\ndata: {kind: generated}\nprivacy: {modes: []}\n")
    with pytest.raises(ConfigError, match=r"privacy\.modes: an empty list accepts no privacy mode"):
        load_site_config(path)
    path.write_text("id: bank-a\ndata: {kind: generated}\nprivacy: {modes: [rot13]}\n")
    with pytest.raises(
        ConfigError, match=r"privacy\.modes\[0\]: .*'plaintext', 'ckks' or 'secagg\+'"
    ):
        load_site_config(path)
    path.write_text("id: bank-a\ndata: {kind: generated}\nprivacy: {mode: ckks}\n")
    with pytest.raises(ConfigError, match=r"privacy\.mode: unknown field.*did you mean 'modes'"):
        load_site_config(path)


def test_the_policy_lists_every_privacy_mode() -> None:
    from typing import get_args

    accepted = get_args(SitePrivacy.model_fields["modes"].annotation)[0]
    assert set(get_args(accepted)) == set(get_args(PrivacySpec.model_fields["mode"].annotation))


def test_fedcore_run_pins_each_site_to_the_scenario_mode(tmp_path: Path) -> None:
    scenario = make_scenario({"mode": "secagg+", "dp": DP}, ("bank-a", "bank-b", "bank-c"))
    cfg = SiteConfig.from_scenario(scenario, "bank-b")
    assert cfg.privacy == SitePrivacy(modes=["secagg+"], require_dp=True)
    dump_site_config(cfg, tmp_path / "bank-b.yaml")
    assert load_site_config(tmp_path / "bank-b.yaml").privacy == cfg.privacy
    plain = SiteConfig.from_scenario(make_scenario({"mode": "plaintext"}), SITE)
    assert plain.privacy == SitePrivacy(modes=["plaintext"], require_dp=False)


def test_the_shipped_site_files_accept_the_walk_through_and_refuse_plaintext() -> None:
    scenario = load_scenario(REPO / "scenarios" / "bank-fraud-3.yaml", check_files=False)
    for site in scenario.sites:
        policy = load_site_config(REPO / "scenarios" / "sites" / f"{site.id}.yaml").privacy
        assert policy.refusal(scenario.privacy) == ""  # the README's consortium by hand
        assert policy.refusal(PrivacySpec(mode="secagg+")) == ""
        assert policy.refusal(PrivacySpec(mode="plaintext")) != ""


# --------------------------------------------------------------------------- at the site


@pytest.mark.parametrize("mtype", [R.TRAIN, R.EVALUATE, R.EXPORT])
def test_a_ckks_site_refuses_plaintext_before_it_writes_anything(
    ckks_site: Site, mtype: str, caplog: pytest.LogCaptureFixture
) -> None:
    plain = ckks_site.config(PrivacySpec())
    content = (R.evaluate_instruction if mtype == R.EVALUATE else R.train_instruction)(
        ckks_site.base, plain
    )
    with caplog.at_level(logging.WARNING, logger="clients.protection.registry"):
        why = refused(ckks_site.ask(content, mtype))
    assert "refused a round in privacy mode 'plaintext'" in why
    assert (
        f"this site accepts only ckks (privacy.modes in the site config {ckks_site.site_file})"
        in why
    )
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m in why for m in logged), logged  # the site's own log says the same
    assert not ckks_site.state.exists()  # no cache, no data size, no model copy, no export
    assert ckks_train(ckks_site).content.config_records  # an allowed round is still served


def test_a_ckks_site_refuses_plaintext_and_secagg_and_keeps_its_state(ckks_site: Site) -> None:
    first = R.TrainReply.from_content(ckks_train(ckks_site).content)
    assert first.encrypted is not None and first.num_examples > 0
    before = state_digest(ckks_site.state)
    assert any(k.startswith("global/") for k in before) and "data-size.json" in before

    plain = ckks_site.config(PrivacySpec())
    secagg = ckks_site.config(PrivacySpec(mode="secagg+"))
    hostile = [
        (R.train_instruction(ckks_site.base, plain), R.TRAIN, "'plaintext'"),
        (R.evaluate_instruction(ckks_site.base, plain), R.EVALUATE, "'plaintext'"),
        (R.train_instruction(ckks_site.base, plain), R.EXPORT, "'plaintext'"),
        (R.train_instruction(ckks_site.base, secagg), R.TRAIN, "'secagg+'"),
        (R.evaluate_instruction(ckks_site.base, secagg), R.EVALUATE, "'secagg+'"),
        (secagg_setup(), R.TRAIN, "'secagg+'"),  # refused at the first stage of the protocol
        (secagg_fit(ckks_site), R.TRAIN, "'secagg+'"),
    ]
    for content, mtype, mode in hostile:
        why = refused(ckks_site.ask(content, mtype))
        assert f"refused a round in privacy mode {mode}: this site accepts only ckks" in why, why
        assert str(ckks_site.site_file) in why
        assert state_digest(ckks_site.state) == before, (mtype, mode)

    again = R.TrainReply.from_content(ckks_train(ckks_site).content)
    assert again.encrypted is not None and again.num_examples == first.num_examples


def test_a_site_requiring_dp_refuses_a_round_without_it(
    tmp_path: Path, task_identity: None
) -> None:
    scenario = make_scenario({"mode": "plaintext"})
    site = make_site(tmp_path, scenario, SitePrivacy(modes=["plaintext"], require_dp=True))
    why = refused(site.ask(R.train_instruction(site.base, site.config(PrivacySpec())), R.TRAIN))
    assert "privacy mode 'plaintext' without differential privacy: this site requires it" in why
    assert f"privacy.require_dp in the site config {site.site_file}" in why
    assert "accepts only" not in why  # the mode itself is accepted
    assert not site.state.exists()

    with_dp = site.config(PrivacySpec(dp=DpSpec(**DP)))
    reply = R.TrainReply.from_content(
        site.ask(R.train_instruction(site.base, with_dp), R.TRAIN).content
    )
    update = np.concatenate([(reply.arrays[k] - site.base[k]).ravel() for k in sorted(site.base)])
    assert reply.num_examples > 0 and np.linalg.norm(update) <= DP["clip_norm"]  # clipped


def test_no_sequence_of_task_specs_fills_the_site_disk(tmp_path: Path, task_identity: None) -> None:
    """Each distinct task spec builds a graph; the site keeps the 4 most recently used."""
    from fedcore.data.sites import MAX_GRAPH_CACHES

    scenario = make_scenario({"mode": "plaintext"})
    site = make_site(tmp_path, scenario, SitePrivacy(modes=["plaintext"]))
    for i in range(MAX_GRAPH_CACHES + 3):
        task = scenario.task.model_copy(update={"hidden": 8 + i})
        other = scenario.model_copy(update={"task": task})
        cfg = replace(site.config(PrivacySpec()), task=task)
        reply = site.ask(R.evaluate_instruction(initial_arrays(other), cfg), R.EVALUATE)
        assert R.EvalReply.from_content(reply.content).num_examples > 0
        graphs = list((site.state / "cache").glob("graph-*.pt"))
        assert len(graphs) == min(i + 1, MAX_GRAPH_CACHES)


# --------------------------------------------------------------------------- at the coordinator


def test_the_coordinator_records_why_the_sites_refused(tmp_path: Path, task_identity: None) -> None:
    """A scenario asking plaintext of sites that accept ckks and secagg+: every site refuses."""
    scenario = make_scenario({"mode": "plaintext"}, ("bank-a", "bank-b"))
    nodes = {}
    for sid in ("bank-a", "bank-b"):
        path = tmp_path / f"{sid}.yaml"
        cfg = SiteConfig.from_scenario(scenario, sid).model_copy(update={"privacy": SitePrivacy()})
        dump_site_config(cfg, path)
        nodes[sid] = {"site-config": str(path), STATE_DIR_KEY: str(tmp_path / f"state-{sid}")}
    keys, ctx = load_coordinator_kit(None)
    driver = RoundDriver(
        InProcessGrid(make_client_app(), nodes),
        scenario,
        RandomSelector(1.0, 2, scenario.seed),
        tmp_path / "out",
        initial_arrays(scenario),
        wait_for_sites=1,
        registered_keys=keys,
        ckks_context=ctx,
    )
    with pytest.raises(FederationError):
        driver.run()
    error = json.loads((tmp_path / "out" / "federation.json").read_text())["error"]
    for sid in ("bank-a", "bank-b"):
        assert (
            f"{sid}: site error: clients.protection.registry.PrivacyRefused: refused a round in "
            f"privacy mode 'plaintext': this site accepts only ckks, secagg+ (privacy.modes in "
            f"the site config {tmp_path / f'{sid}.yaml'})"
        ) in error


def test_a_simulated_run_is_unaffected(tmp_path: Path) -> None:
    """`fedcore run` of a SecAgg+ scenario with DP: each site file accepts exactly that."""
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        textwrap.dedent(
            """\
            name: tiny-policy
            seed: 5
            rounds: 1
            sites:
              - {id: bank-a, data: {kind: generated, transactions: 300, fraud_rate: 0.05, days: 10}}
              - {id: bank-b, data: {kind: generated, transactions: 300, fraud_rate: 0.05, days: 10}}
              - {id: bank-c, data: {kind: generated, transactions: 300, fraud_rate: 0.05, days: 10}}
            task: {hidden: 8, layers: 1}
            training: {local_epochs: 1}
            scheduler: {min_sites: 3}
            privacy: {mode: secagg+, dp: {noise_multiplier: 1.0, clip_norm: 0.1}}
            baselines: {local_only: false, centralized: false, non_graph: false}
            export: {enabled: false}
            """
        )
    )
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "fedcore.cli.main", "run", str(scenario), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr + res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [r["sites"] for r in summary["rounds"]] == [["bank-a", "bank-b", "bank-c"]]
    for sid in ("bank-a", "bank-b", "bank-c"):
        policy = load_site_config(out / "sites" / f"{sid}.yaml").privacy
        assert policy == SitePrivacy(modes=["secagg+"], require_dp=True)
    assert "refused a round" not in res.stdout + res.stderr
