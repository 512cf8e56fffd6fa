"""Tests of benchmarks/compare.py, the fraction-of-floor regression gate of bench.yml (synthetic
documents, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import compare  # noqa: E402

SCRIPT = Path(__file__).with_name("compare.py")


def ours(fracs: dict[str, dict[str, float]], marks: dict[tuple[str, str], dict] | None = None) -> dict:
    """A numbanorm-bench/2 document with the given group -> peer -> fraction of floor."""
    marks = marks or {}
    return {"format": "numbanorm-bench/2",
            "results": [{"group": g, "roofline": {"copies": {}},
                         "peers": {p: {"floor_fraction": f, "time_s": 1.0} | marks.get((g, p), {})
                                   for p, f in peers.items()}}
                        for g, peers in fracs.items()]}


def pytest_benchmark(times: dict[str, dict[str, float]]) -> dict:
    """A pytest-benchmark --benchmark-json document with the given medians."""
    return {"benchmarks": [{"group": g, "name": f"test_bench[{g}-{p}]", "extra_info": {"peer": p},
                            "stats": {"median": t, "min": t / 2}}
                           for g, peers in times.items() for p, t in peers.items()]}


BASE = {"ln|NLC|2x3": {"numbanorm": 0.5, "torch": 0.25}}


def test_pytest_benchmark_fraction_is_fastest_copy_over_peer():
    doc = pytest_benchmark({"ln|NLC|2x3": {"copy": 1.5, "copy-nt": 1.0, "copy-1t": 3.0, "numbanorm": 2.0,
                                           "torch": 4.0}})
    fr, skip = compare.fractions(doc)
    assert fr == {("ln|NLC|2x3", "numbanorm"): 0.5, ("ln|NLC|2x3", "torch"): 0.25} and not skip


def test_same_fraction_on_a_slower_machine_is_no_regression():
    slow = pytest_benchmark({"ln|NLC|2x3": {"copy": 3.0, "numbanorm": 6.0}})
    rows, _ = compare.compare(ours(BASE), slow, tolerance=0.1)
    assert len(rows) == 1 and not rows[0]["regressed"] and rows[0]["change"] == pytest.approx(0.0)


@pytest.mark.parametrize(("slowdown", "regressed"), [(1.2, False), (1.5, True), (0.5, False)])
def test_regression_beyond_tolerance(slowdown, regressed):
    cur = {"ln|NLC|2x3": {"numbanorm": 0.5 / slowdown}}
    rows, _ = compare.compare(ours(BASE), ours(cur), tolerance=0.3)
    assert rows[0]["regressed"] is regressed
    assert rows[0]["change"] == pytest.approx(1 / slowdown - 1)


def test_unstable_or_suspect_cells_are_noted_not_checked():
    cur = ours({"ln|NLC|2x3": {"numbanorm": 0.01}}, {("ln|NLC|2x3", "numbanorm"): {"unstable": True}})
    rows, notes = compare.compare(ours(BASE), cur)
    assert rows == [] and notes == ["ln|NLC|2x3 numbanorm: unstable now, not checked"]
    base = ours(BASE, {("ln|NLC|2x3", "numbanorm"): {"floor_suspect": True}})
    rows, notes = compare.compare(base, ours(BASE))
    assert rows == [] and notes == ["ln|NLC|2x3 numbanorm: above its floor in the baseline, not checked"]


def test_only_chosen_peers_are_checked_and_missing_cases_noted():
    cur = {"ln|NLC|2x3": {"numbanorm": 0.5, "torch": 0.01}, "bn|NCHW|1": {"numbanorm": 0.9}}
    rows, notes = compare.compare(ours(BASE), ours(cur))
    assert [(r["group"], r["peer"]) for r in rows] == [("ln|NLC|2x3", "numbanorm")]  # torch slowed, not checked
    assert notes == ["bn|NCHW|1 numbanorm: not in the baseline"]


def test_bad_input():
    with pytest.raises(ValueError, match="tolerance"):
        compare.compare(ours(BASE), ours(BASE), tolerance=1.5)
    with pytest.raises(ValueError, match="not a numbanorm-bench"):
        compare.fractions({"foo": 1})
    with pytest.raises(ValueError, match="no fraction of floor"):
        compare.fractions({"format": "numbanorm-bench/1", "results": []})


def test_cli_exit_codes(tmp_path):
    def run(cur):
        (tmp_path / "b.json").write_text(json.dumps(ours(BASE)))
        (tmp_path / "c.json").write_text(json.dumps(cur))
        cmd = [sys.executable, str(SCRIPT), str(tmp_path / "b.json"), str(tmp_path / "c.json"), "--tolerance", "0.25"]
        return subprocess.run(cmd, capture_output=True, text=True)

    ok = run(ours(BASE))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = run(ours({"ln|NLC|2x3": {"numbanorm": 0.2}}))
    assert bad.returncode == 1 and "REGRESSION" in bad.stdout
    assert run(ours({"other|x|1": {"numbanorm": 1.0}})).returncode == 2


def test_baseline_in_repo_is_readable():
    baseline = json.loads(SCRIPT.with_name("baseline.json").read_text())
    fr, _ = compare.fractions(baseline)
    assert any(peer == "numbanorm" for _, peer in fr), "baseline has no stable numbanorm cell"
