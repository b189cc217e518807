"""The site's graph cache stays bounded: the most recently used task specs, oldest removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fedcore.config import GeneratedData, SiteConfig, TaskSpec
from fedcore.data.sites import MAX_GRAPH_CACHES, _cache_key, load_site_data, prune_caches

SPEC = GeneratedData(transactions=200, fraud_rate=0.05, days=10)


def site(state: Path) -> SiteConfig:
    return SiteConfig(id="bank-a", data=SPEC, seed=1, state_dir=state)


def task(i: int) -> TaskSpec:
    """Task specs that differ (each its own cache key); ``hidden`` leaves the graph alike."""
    return TaskSpec(hidden=8 + i, layers=1)


def cached(state: Path) -> set[str]:
    return {p.name for p in (state / "cache").glob("graph-*.pt")}


def name(cfg: SiteConfig, i: int) -> str:
    return f"graph-{_cache_key(cfg, task(i))}.pt"


def load(cfg: SiteConfig, i: int) -> None:
    load_site_data(cfg, task(i))
    time.sleep(0.02)  # past the file system's timestamp granularity: one use, one later time


def test_no_sequence_of_task_specs_keeps_more_than_the_bound(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    assert MAX_GRAPH_CACHES == 4
    for i in range(7):
        load(cfg, i)
        assert len(cached(tmp_path)) == min(i + 1, MAX_GRAPH_CACHES)
    assert cached(tmp_path) == {name(cfg, i) for i in (3, 4, 5, 6)}  # the oldest went first
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left behind


def test_a_cache_hit_counts_as_use(tmp_path: Path) -> None:
    cfg = site(tmp_path)
    for i in range(4):
        load(cfg, i)
    load(cfg, 0)  # a hit: spec 0 is now the most recently used
    load(cfg, 4)  # a fifth spec pushes out spec 1, the least recently used
    assert cached(tmp_path) == {name(cfg, i) for i in (0, 2, 3, 4)}


def write(folder: Path, file: str, mtime_s: int) -> Path:
    path = folder / file
    path.write_bytes(b"x")
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def test_prune_keeps_the_newest_by_time_then_name(tmp_path: Path) -> None:
    # times 1, 2, 3, 3 (a tie: name c before d, reversed: d newer) and 5; keep 3
    for file, t in (("graph-a.pt", 1), ("graph-b.pt", 2), ("graph-c.pt", 3), ("graph-d.pt", 3)):
        write(tmp_path, file, t)
    write(tmp_path, "graph-e.pt", 5)
    other = write(tmp_path, "patches-old.pt", 0)  # another cache's files are not counted
    removed = prune_caches(tmp_path, "graph-*.pt", 3)
    assert [p.name for p in removed] == ["graph-b.pt", "graph-a.pt"]  # oldest last
    assert {p.name for p in tmp_path.glob("graph-*.pt")} == {
        "graph-c.pt",
        "graph-d.pt",
        "graph-e.pt",
    }
    assert other.exists()


def test_prune_always_keeps_the_file_just_used(tmp_path: Path) -> None:
    old = write(tmp_path, "graph-old.pt", 1)  # e.g. a clock set back: older than the rest
    for i in range(3):
        write(tmp_path, f"graph-{i}.pt", 10 + i)
    prune_caches(tmp_path, "graph-*.pt", 2, current=old)
    assert {p.name for p in tmp_path.glob("graph-*.pt")} == {"graph-old.pt", "graph-2.pt"}
    assert prune_caches(tmp_path / "missing", "graph-*.pt", 2) == []


@pytest.mark.parametrize("keep", [0, -1])
def test_prune_to_nothing(tmp_path: Path, keep: int) -> None:
    write(tmp_path, "graph-a.pt", 1)
    assert [p.name for p in prune_caches(tmp_path, "graph-*.pt", keep)] == ["graph-a.pt"]
