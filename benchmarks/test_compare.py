"""Tests of benchmarks/compare.py, the roofline-normalized regression gate of bench.yml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import compare  # noqa: E402

SCRIPT = Path(__file__).with_name("compare.py")


def ours(times: dict[str, dict[str, float]]) -> dict:
    """A numbanorm-bench/1 document with the given group -> peer -> seconds."""
    return {"format": "numbanorm-bench/1",
            "results": [{"group": g, "peers": {p: {"median_s": t * 2, "time_s": t} for p, t in peers.items()}}
                        for g, peers in times.items()]}


def pytest_benchmark(times: dict[str, dict[str, float]]) -> dict:
    """A pytest-benchmark --benchmark-json document with the given medians."""
    return {"benchmarks": [{"group": g, "name": f"test_forward[{g}-{p}]", "extra_info": {"peer": p},
                            "stats": {"median": t, "min": t / 2}}
                           for g, peers in times.items() for p, t in peers.items()]}


BASE = {"ln|NLC|2x3": {"copy": 1.0, "numbanorm": 2.0, "torch": 4.0}}


@pytest.mark.parametrize("fmt", [ours, pytest_benchmark])
def test_normalization_is_copy_over_peer_time(fmt):
    norm = compare.normalized(compare.load_times(fmt(BASE)))
    assert norm == {("ln|NLC|2x3", "numbanorm"): 0.5, ("ln|NLC|2x3", "torch"): 0.25}


def test_slower_machine_is_not_a_regression():
    # Everything 3x slower, copy included: the roofline-normalized throughput is unchanged.
    slow = {g: {p: 3 * t for p, t in peers.items()} for g, peers in BASE.items()}
    rows, _ = compare.compare(ours(BASE), pytest_benchmark(slow), tolerance=0.1)
    assert len(rows) == 1 and not rows[0]["regressed"] and rows[0]["change"] == pytest.approx(0.0)


@pytest.mark.parametrize(("slowdown", "regressed"), [(1.2, False), (1.5, True), (0.5, False)])
def test_regression_beyond_tolerance(slowdown, regressed):
    cur = {"ln|NLC|2x3": {"copy": 1.0, "numbanorm": 2.0 * slowdown}}
    rows, _ = compare.compare(ours(BASE), ours(cur), tolerance=0.3)
    assert rows[0]["regressed"] is regressed
    assert rows[0]["change"] == pytest.approx(1 / slowdown - 1)


def test_only_chosen_peers_are_checked_and_missing_cases_noted():
    cur = {"ln|NLC|2x3": {"copy": 1.0, "numbanorm": 2.0, "torch": 40.0}, "bn|NCHW|1": {"copy": 1, "numbanorm": 1}}
    rows, notes = compare.compare(ours(BASE), ours(cur))
    assert [(r["group"], r["peer"]) for r in rows] == [("ln|NLC|2x3", "numbanorm")]  # torch slowed, not checked
    assert notes == ["bn|NCHW|1 numbanorm: not in the baseline"]


def test_bad_input():
    with pytest.raises(ValueError, match="tolerance"):
        compare.compare(ours(BASE), ours(BASE), tolerance=1.5)
    with pytest.raises(ValueError, match="not a numbanorm-bench"):
        compare.load_times({"foo": 1})


def test_cli_exit_codes(tmp_path):
    def run(cur):
        (tmp_path / "b.json").write_text(json.dumps(ours(BASE)))
        (tmp_path / "c.json").write_text(json.dumps(cur))
        cmd = [sys.executable, str(SCRIPT), str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--tolerance", "0.25"]
        return subprocess.run(cmd, capture_output=True, text=True)

    ok = run(ours(BASE))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = run(ours({"ln|NLC|2x3": {"copy": 1.0, "numbanorm": 4.0}}))
    assert bad.returncode == 1 and "REGRESSION" in bad.stdout
    empty = run(ours({"other|x|1": {"copy": 1.0, "numbanorm": 1.0}}))
    assert empty.returncode == 2


def test_baseline_in_repo_is_readable():
    baseline = json.loads(SCRIPT.with_name("baseline.json").read_text())
    norm = compare.normalized(compare.load_times(baseline))
    assert any(peer == "numbanorm" for _, peer in norm), "baseline has no numbanorm case with a copy roofline"
