"""The coordinator's state store: SQLite rounds, digests, fall back past damage, the old layout."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from coordinator.state import Checkpoint, SQLiteRoundStore, StateError, StateStore
from fedcore.storage import atomic_write_json, save_arrays

FP = "fp-scenario-a"
REPO = Path(__file__).resolve().parents[2]


def arrays_of(round_: int, n: int = 4096) -> dict[str, np.ndarray]:
    """A model whose every value names its round (so its bytes can be found in the file)."""
    return {
        "f32": np.full(n, round_ + 0.125, np.float32),
        "f64": np.linspace(-1.0, 1.0, 7, dtype=np.float64) * round_,
        "i8": np.array([-128, round_, 127], dtype=np.int8),
        "scalar": np.array(round_ / 3, dtype=np.float64),
    }


def checkpoint_of(round_: int, fingerprint: str = FP) -> Checkpoint:
    return Checkpoint(
        fingerprint,
        round_,
        history=[{"round": r, "loss": 1.0 / r} for r in range(1, round_ + 1)],
        schedule=[{"round": round_, "chosen": ["bank-a"]}],
        extra={"run_key": "k-1", "dp": {"steps": round_}},
    )


def saved(out: Path, rounds: range, keep: int = 2) -> StateStore:
    store = StateStore(out, keep=keep)
    for r in rounds:
        store.save(checkpoint_of(r), arrays_of(r))
    return store


def db_of(out: Path) -> Path:
    return out / "state" / "state.db"


def stored_rounds(out: Path) -> list[int]:
    with sqlite3.connect(db_of(out)) as conn:
        return [r for (r,) in conn.execute("SELECT round FROM rounds ORDER BY round")]


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, a in want.items():
        assert (got[name].dtype, got[name].shape) == (a.dtype, a.shape), name
        assert got[name].tobytes() == a.tobytes(), name


# ---------------------------------------------------------------------- round trip, keep, refuse


def test_round_trip_is_bit_identical_with_dtypes(tmp_path: Path) -> None:
    saved(tmp_path, range(1, 3))
    store = StateStore(tmp_path)
    loaded = store.load(FP)
    assert loaded is not None
    cp, arrays = loaded
    assert cp == checkpoint_of(2)
    assert_same_arrays(arrays, arrays_of(2))
    assert store.checkpoint(FP) == checkpoint_of(2)
    assert store.recovered is None
    # the checkpoint holds the run key and privacy state: owner only
    assert stat.S_IMODE(db_of(tmp_path).stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["state.db"]  # no journal


def test_an_empty_directory_holds_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "out")
    assert store.load(FP) is None and store.checkpoint(FP) is None
    assert not (tmp_path / "out" / "state").exists()  # reading creates nothing


def test_another_scenarios_state_is_refused_everywhere(tmp_path: Path) -> None:
    store = saved(tmp_path, range(1, 3))
    expected = r"different scenario: expected fingerprint fp-b, found fp-scenario-a\. Fix: "
    with pytest.raises(StateError, match=expected):
        store.load("fp-b")
    with pytest.raises(StateError, match=expected):
        store.checkpoint("fp-b")
    with pytest.raises(StateError, match="different scenario"):
        store.save(checkpoint_of(3, "fp-b"), arrays_of(3))
    assert stored_rounds(tmp_path) == [1, 2]  # the refused save changed nothing


@pytest.mark.parametrize(("keep", "left"), [(1, [4]), (2, [3, 4]), (3, [2, 3, 4])])
def test_only_the_newest_rounds_are_kept(tmp_path: Path, keep: int, left: list[int]) -> None:
    saved(tmp_path, range(1, 5), keep=keep)
    assert stored_rounds(tmp_path) == left


def test_keep_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1.*got 0"):
        StateStore(tmp_path, keep=0)


def test_saving_an_earlier_round_replaces_the_later_ones(tmp_path: Path) -> None:
    store = saved(tmp_path, range(1, 4), keep=5)
    store.save(checkpoint_of(2), arrays_of(7))  # a run resumed after round 1 redoes round 2
    assert stored_rounds(tmp_path) == [1, 2]
    loaded = store.load(FP)
    assert loaded is not None and loaded[0].round == 2
    assert_same_arrays(loaded[1], arrays_of(7))


# ---------------------------------------------------------------------- damage: fall back or refuse


def test_a_corrupt_newest_model_falls_back_to_the_round_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved(tmp_path, range(1, 4))
    raw = bytearray(db_of(tmp_path).read_bytes())
    at = raw.find(np.full(64, 3.125, np.float32).tobytes())  # round 3's model, on disk
    assert at > 0
    raw[at + 1] ^= 0xFF  # one flipped bit pattern in the blob: the file stays a valid database
    db_of(tmp_path).write_bytes(bytes(raw))

    store = StateStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="coordinator.state"):
        loaded = store.load(FP)
    assert loaded is not None
    cp, arrays = loaded
    assert cp == checkpoint_of(2)
    assert_same_arrays(arrays, arrays_of(2))
    assert store.recovered is not None
    assert store.recovered.round == 2
    assert store.recovered.skipped == ((3, "model does not match its SHA-256 digest"),)
    warning = "resuming after round 2, the newest intact round; newer round(s) skipped as damaged"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert warning in caplog.text and "round 3: model does not match" in caplog.text
    assert str(db_of(tmp_path)) in caplog.text

    # the run redoes round 3 over the damaged row; the next start finds it intact
    store.save(checkpoint_of(3), arrays_of(3))
    again = StateStore(tmp_path)
    loaded = again.load(FP)
    assert loaded is not None and loaded[0].round == 3 and again.recovered is None
    assert_same_arrays(loaded[1], arrays_of(3))


def test_a_corrupt_newest_checkpoint_falls_back_too(tmp_path: Path) -> None:
    saved(tmp_path, range(1, 4))
    with sqlite3.connect(db_of(tmp_path)) as conn:
        conn.execute("UPDATE rounds SET checkpoint = '{\"round\": 3' WHERE round = 3")
    store = StateStore(tmp_path)
    cp = store.checkpoint(FP)  # what the audit reads agrees with what the run resumes from
    assert cp is not None and cp.round == 2
    assert store.recovered is not None
    assert store.recovered.skipped == ((3, "checkpoint does not match its SHA-256 digest"),)


def test_no_intact_round_left_is_a_clear_error(tmp_path: Path) -> None:
    saved(tmp_path, range(1, 3))
    with sqlite3.connect(db_of(tmp_path)) as conn:
        conn.execute("UPDATE rounds SET model_sha256 = 'x'")
    with pytest.raises(StateError) as err:
        StateStore(tmp_path).load(FP)
    msg = str(err.value)
    assert "expected at least one intact round to resume from, found none" in msg
    assert "round 2: model does not match" in msg and "round 1: model does not match" in msg
    assert f"Fix: move {db_of(tmp_path)} away" in msg


def test_garbage_over_the_database_is_a_clear_error(tmp_path: Path) -> None:
    saved(tmp_path, range(1, 3))
    size = db_of(tmp_path).stat().st_size
    db_of(tmp_path).write_bytes((b"not sqlite, just garbage " * size)[:size])
    store = StateStore(tmp_path)
    for read in (store.load, store.checkpoint):
        with pytest.raises(StateError) as err:
            read(FP)
        msg = str(err.value)
        assert msg.startswith(
            f"{db_of(tmp_path)}: expected the coordinator's SQLite state database"
        )
        assert "found an unreadable file (file is not a database)" in msg
        assert "Fix: move it" in msg and "fresh --out" in msg


def test_a_truncated_database_is_a_clear_error(tmp_path: Path) -> None:
    saved(tmp_path, range(1, 4))
    os.truncate(db_of(tmp_path), db_of(tmp_path).stat().st_size * 6 // 10)
    with pytest.raises(
        StateError, match=r"found an unreadable file \(database disk image is malformed\)"
    ):
        StateStore(tmp_path).load(FP)


def test_an_empty_database_file_says_it_starts_from_round_0(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_of(tmp_path).parent.mkdir(parents=True)
    db_of(tmp_path).touch()
    with caplog.at_level(logging.WARNING, logger="coordinator.state"):
        assert StateStore(tmp_path).load(FP) is None
    assert "is empty: no round stored there yet; starting from round 0" in caplog.text


def test_a_database_failing_its_integrity_check_is_rebuilt_from_its_intact_round(
    tmp_path: Path,
) -> None:
    saved(tmp_path, range(1, 4))
    with sqlite3.connect(db_of(tmp_path)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_meta_1'"
        ).fetchone()
    with open(db_of(tmp_path), "r+b") as fh:  # zero the meta key's index page
        fh.seek((root - 1) * page_size)
        fh.write(bytes(page_size))

    store = StateStore(tmp_path)
    loaded = store.load(FP)
    assert loaded is not None and loaded[0].round == 3
    assert_same_arrays(loaded[1], arrays_of(3))
    assert store.recovered is not None and "integrity check failed" in store.recovered.note
    aside = [p for p in (tmp_path / "state").iterdir() if p.name.startswith("state.db.damaged-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in store.recovered.message
    with sqlite3.connect(db_of(tmp_path)) as conn:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    fresh = StateStore(tmp_path)
    assert fresh.checkpoint(FP) == checkpoint_of(3) and fresh.recovered is None


# ---------------------------------------------------------------------- interrupted saves


def test_a_save_that_fails_inside_its_transaction_leaves_the_round_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = saved(tmp_path, range(1, 3))

    def fail(self: SQLiteRoundStore, round_: int) -> None:
        raise OSError(f"disk gone during round {round_}")

    monkeypatch.setattr(SQLiteRoundStore, "_before_commit", fail)
    with pytest.raises(OSError, match="disk gone during round 3"):
        store.save(checkpoint_of(3), arrays_of(3))
    monkeypatch.undo()
    assert stored_rounds(tmp_path) == [1, 2]
    loaded = StateStore(tmp_path).load(FP)
    assert loaded is not None and loaded[0] == checkpoint_of(2)


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from coordinator.state import Checkpoint, SQLiteRoundStore, StateStore

    def stall(self, round_):
        print("inside transaction", round_, flush=True)
        time.sleep(120)

    SQLiteRoundStore._before_commit = stall
    # 8 MB: more than SQLite's page cache, so pages reach state.db before the commit
    big = {"f32": np.full(2_000_000, 3.125, np.float32)}
    StateStore(Path(sys.argv[1])).save(Checkpoint(sys.argv[2], 3), big)
    """
)


def test_a_save_killed_mid_transaction_leaves_round_2_intact(tmp_path: Path) -> None:
    saved(tmp_path, range(1, 3))
    before = StateStore(tmp_path).load(FP)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), FP],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "inside transaction 3"
        journal = db_of(tmp_path).with_name("state.db-journal")
        assert journal.exists()  # the transaction had begun writing
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    store = StateStore(tmp_path)
    loaded = store.load(FP)  # the hot journal is rolled back on open
    assert loaded is not None and before is not None
    assert loaded[0] == checkpoint_of(2) and store.recovered is None
    assert_same_arrays(loaded[1], before[1])
    assert not journal.exists()
    assert stored_rounds(tmp_path) == [1, 2]
    with sqlite3.connect(db_of(tmp_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# ---------------------------------------------------------------------- the earlier file layout


def write_legacy(out: Path, rounds: range, fingerprint: str = FP) -> None:
    """What ``StateStore.save`` wrote before SQLite: one file per model, then checkpoint.json."""
    state = out / "state"
    for r in rounds:
        save_arrays(state / f"global-round-{r:04d}.safetensors", arrays_of(r))
        atomic_write_json(state / "checkpoint.json", checkpoint_of(r, fingerprint).__dict__)


def test_the_earlier_file_layout_resumes_once_then_continues_in_sqlite(tmp_path: Path) -> None:
    write_legacy(tmp_path, range(1, 3))
    store = StateStore(tmp_path)
    assert store.checkpoint(FP) == checkpoint_of(2)
    loaded = store.load(FP)
    assert loaded is not None and loaded[0] == checkpoint_of(2)
    want = arrays_of(2)
    want["scalar"] = want["scalar"].reshape(1)  # the file layout stored 0-d arrays as shape (1,)
    assert_same_arrays(loaded[1], want)
    state = tmp_path / "state"
    assert not (state / "checkpoint.json").exists()
    assert (state / "checkpoint.json.imported").exists()  # read once, kept for the record
    assert stored_rounds(tmp_path) == [2]

    store.save(checkpoint_of(3), arrays_of(3))
    loaded = StateStore(tmp_path).load(FP)
    assert loaded is not None and loaded[0] == checkpoint_of(3)
    assert_same_arrays(loaded[1], arrays_of(3))


def test_the_earlier_layout_of_another_scenario_is_refused(tmp_path: Path) -> None:
    write_legacy(tmp_path, range(1, 3), fingerprint="fp-other")
    with pytest.raises(StateError, match="different scenario: expected fingerprint fp-scenario-a"):
        StateStore(tmp_path).load(FP)
    assert (tmp_path / "state" / "checkpoint.json").exists()  # left as it was


def test_the_earlier_layout_without_its_model_is_a_clear_error(tmp_path: Path) -> None:
    write_legacy(tmp_path, range(1, 3))
    (tmp_path / "state" / "global-round-0002.safetensors").unlink()
    with pytest.raises(
        StateError,
        match=r"says round 2 is complete: expected its model "
        r"global-round-0002\.safetensors, found it missing",
    ):
        StateStore(tmp_path).load(FP)
