"""The report logic of ``python -m numbanorm.bench`` on synthetic timings (nothing is timed here):
floors per op, roofline and fraction of floor, suspect and unstable cells, width fitting, the
isolation ledger, the JSON schemas, the dashboard file and the README summary."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from numbanorm.bench import _analysis, _cases, _driver, _export, _floors, _report, _schema

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
LLC = 32 * MB


def spec(op: str) -> _cases.OpSpec:
    return _cases.OPS[op]


@pytest.mark.parametrize(("op", "x_bytes", "arrays"), [
    ("layer_norm", 100 * MB, 2), ("rms_norm", 100 * MB, 2), ("batch_norm_eval", 100 * MB, 2),
    ("group_norm", 100 * MB, 2), ("layer_norm_bf16", 100 * MB, 2),
    ("batch_norm_train", 100 * MB, 3), ("batch_norm_train", 4 * MB, 2), ("batch_norm_train_f16", 40 * MB, 3),
    ("layer_norm_backward", 100 * MB, 3), ("layer_norm_backward", MB, 3),
    ("batch_norm_train_backward", 20 * MB, 5), ("batch_norm_train_backward", 8 * MB, 3),
    ("add_layer_norm", MB, 4),
])
def test_floor_per_op(op, x_bytes, arrays):
    fl = _floors.floor(spec(op), x_bytes, LLC)
    assert fl.arrays == arrays and fl.nbytes(x_bytes) == arrays * x_bytes
    assert fl.as_json(x_bytes)["copies_of_x"] == arrays / 2 and fl.moves


def cell(median: float, lo: float | None = None, **extra) -> dict:
    return {"median_s": median, "min_s": lo or median, "max_s": 2 * median, "repeats": 9, "rel_l2_error": 0.0,
            "inner_loops": 1} | extra


def result(op: str = "layer_norm", shape=(4, 8, 16), peers=None, copies=None, stat="median") -> dict:
    case = _cases.Case(op, "NHWC" if op.startswith("batch") else "NLC", shape)
    copies = copies or {"copy": cell(2.0), "copy-nt": cell(1.0), "copy-1t": cell(4.0)}
    return _analysis.assemble(case, (peers or {"numbanorm": cell(2.0)}) | copies, LLC, stat)


def report_of(results: list[dict], peers=("numbanorm", "numbanorm-out", "torch", "numpy")) -> dict:
    return {"format": _report.FORMAT,
            "machine": {"date": "2026-01-01T00:00:00+00:00", "cpu": "Test CPU", "cpu_flags": ["avx2"], "cores": 2,
                        "llc_bytes": LLC, "threads": 2, "load_avg_1m": 0.5,
                        "versions": {"numba": "0.1", "numpy": "2.0", "torch": "2.13"}},
            "config": {"grid": "quick", "ops": [], "peers": list(peers), "threads": 2, "budget_s": 0.2,
                       "stat": "median"},
            "missing_peers": {}, "results": results,
            "isolation": {"quiesce": True, "max_others_cores": 0.01, "mean_others_cores": 0.001,
                          "workers": {"numbanorm": {"idle_cpu_s": 0.0, "idle_wall_s": 1.0, "idle_cores": 0.0}}}}


def test_roofline_is_the_fastest_copy_and_fraction_is_its_time_over_the_op():
    res = result(peers={"numbanorm": cell(2.0), "torch": cell(4.0)})
    assert res["roofline"]["used"] == "copy-nt" and res["roofline"]["time_s"] == 1.0
    assert res["peers"]["numbanorm"]["floor_fraction"] == 0.5 and res["peers"]["torch"]["floor_fraction"] == 0.25
    assert res["peers"]["numbanorm"]["gbps"] == pytest.approx(res["floor"]["bytes"] / 2.0 / 1e9)
    assert not any(e.get("floor_suspect") for e in res["peers"].values())
    by_min = result(peers={"numbanorm": cell(2.0, 1.0)}, stat="min")
    assert by_min["peers"]["numbanorm"]["time_s"] == 1.0


def test_above_the_floor_is_reported_not_printed():
    rep = report_of([result(peers={"numbanorm": cell(0.9), "torch": cell(1.0)})])
    nb = rep["results"][0]["peers"]["numbanorm"]
    assert nb["floor_suspect"] and nb["floor_fraction"] == pytest.approx(1 / 0.9)
    header, rows = _report.table(rep)
    assert rows[0][header.index("nb/floor")] == _report.SUSPECT
    assert rows[0][header.index("torch/floor")] == "1.00"  # exactly at the floor is fine
    assert any("the floor or the roofline is wrong" in n for n in _report.notes(rep))


def test_spread_cells_are_remeasured_and_marked_when_they_stay_so():
    res = result(peers={"numbanorm": cell(2.0, 1.5), "torch": cell(9.0, 3.0), "numpy": cell(5.0, 2.0)},
                 copies={"copy": cell(1.0, 0.1)})
    whys = _analysis.to_remeasure([res])[res["group"]]  # the copy's spread is not re-measured
    assert set(whys) == {"torch", "numpy"} and "3.0x the min" in whys["torch"]
    _analysis.merge(res, {"torch": cell(9.0, 2.0), "numpy": cell(5.0, 4.0)}, whys, "median")
    torch, numpy = res["peers"]["torch"], res["peers"]["numpy"]
    assert torch["unstable"] and "again" in torch["unstable_why"] and torch["first"]["min_s"] == 3.0
    assert numpy["remeasured"] and not numpy.get("unstable")
    slow = result(peers={"torch": cell(2.0, 0.5)})  # clean the second time, but 20x slower: unstable
    _analysis.merge(slow, {"torch": cell(40.0, 38.0)}, {"torch": "spread"}, "median")
    assert slow["peers"]["torch"]["unstable"] and "20.00x the first" in slow["peers"]["torch"]["unstable_why"]
    again = copy.deepcopy(slow["peers"]["torch"])
    again.pop("unstable"), again.pop("unstable_why")
    _analysis.recheck(again)  # derived from the stored entry alone: --render marks it the same way
    assert again["unstable"]
    rep = report_of([res])
    header, rows = _report.table(rep)
    assert rows[0][header.index("torch/floor")].startswith(_report.UNSTABLE)
    assert rows[0][header.index("vs torch")] == "~4.50×" and rows[0][header.index("vs NumPy")] == "2.50×"
    assert rows[0][header.index("nb/floor")] == "~0.50"  # the copy used is spread: unstable roofline
    assert rows[0][header.index("roof GB/s")].startswith(_report.UNSTABLE)
    assert "| ~" in _report.markdown(rep) and any(n.startswith("unstable: torch") for n in _report.notes(rep))


def test_neighbour_outlier_that_repeats_is_kept_one_that_does_not_is_unstable():
    sizes = [(4, 8, 16), (8, 8, 16), (16, 8, 16)]
    rs = [result(shape=s, peers={"torch": cell(t)}) for s, t in zip(sizes, (1.0, 200.0, 4.0), strict=True)]
    first = copy.deepcopy(rs[1])
    flags = _analysis.neighbour_flags(rs)
    assert list(flags) == [(rs[1]["group"], "torch")] and "below its" in flags[(rs[1]["group"], "torch")]
    twin = copy.deepcopy(first)
    whys = {"torch": flags[(rs[1]["group"], "torch")]}
    _analysis.merge(rs[1], {"torch": cell(210.0)}, whys, "median")
    assert rs[1]["peers"]["torch"]["remeasured"] and not rs[1]["peers"]["torch"].get("unstable")
    _analysis.merge(twin, {"torch": cell(20.0)}, whys, "median")
    assert twin["peers"]["torch"]["unstable"]
    busy = copy.deepcopy(first)  # repeated, but both times on a busy machine: contention not ruled out
    busy["peers"]["torch"]["stall_share"] = 0.6
    _analysis.merge(busy, {"torch": cell(205.0, stall_share=0.7)}, whys, "median")
    assert busy["peers"]["torch"]["unstable"] and "busy machine" in busy["peers"]["torch"]["unstable_why"]


def test_busy_machine_is_noted_not_marked():
    res = result(peers={"numbanorm": cell(2.0, stall_share=0.6), "torch": cell(4.0, stall_share=0.9)})
    assert _analysis.to_remeasure([res]) == {}
    rep = report_of([res])
    rep["isolation"]["busy_share"] = _analysis.busy_share([res])
    assert rep["isolation"]["busy_share"] == pytest.approx(0.75)
    assert any("a busy machine" in n for n in _report.notes(rep))
    assert "~" not in _report.markdown(rep).split("\n\n")[0]


def test_columns_fit_the_width_least_important_dropped_first():
    widths, prios = [30, 5, 8, 8, 8], [0, 3, 1, 4, 2]
    assert _report.fit_columns(widths, prios, 1000) == [0, 1, 2, 3, 4]
    assert _report.fit_columns(widths, prios, _report.table_width([30, 5, 8, 8])) == [0, 1, 2, 4]
    assert _report.fit_columns(widths, prios, _report.table_width([30, 8])) == [0, 2]
    assert _report.fit_columns(widths, prios, 10) == [0]  # the case column always stays
    rep = report_of([result(peers={p: cell(2.0) for p in ("numbanorm", "numbanorm-out", "torch", "numpy")})])
    full, _ = _report.table(rep)
    for width in (60, 80, 100, 250):
        header, rows = _report.table(rep, width=width)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        assert header[0] == "case" and (_report.table_width(widths) <= width or header == ["case"])
        assert header == [h for h in full if h in header]  # order kept


def test_rich_table_stays_within_the_console_width():
    rich = pytest.importorskip("rich.console")
    rep = report_of([result(peers={p: cell(2.0) for p in ("numbanorm", "numbanorm-out", "torch", "numpy")})])
    console = rich.Console(width=72, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    _report.print_table(rep, console=console)
    lines = console.export_text().splitlines()
    assert lines and max(len(line) for line in lines) <= 72


def test_ledger_puts_idle_cpu_on_the_samples_in_between():
    led = _driver.Ledger()
    a = led.sample("torch", ["torch", "numbanorm"])
    led.reply("torch", {"idle_cpu_s": 0.0, "idle_wall_s": 1.0})
    b = led.sample("numbanorm", ["torch", "numbanorm"])
    led.reply("numbanorm", {"idle_cpu_s": 0.5, "idle_wall_s": 1.0})  # it spun while torch was timed
    led.reply("torch", {"idle_cpu_s": 0.25, "idle_wall_s": 0.5})  # and torch while numbanorm was
    assert led.others[a] == 0.5 and led.others[b] == 0.5
    assert led.summary()["torch"]["idle_cores"] == pytest.approx(0.25 / 1.5)
    st = _driver.stats([{"t": 1.0, "wall": 1.0, "cpu": 2.0, "ledger": a, "preempted": 1, "stall": 0.5},
                        {"t": 3.0, "wall": 1.0, "cpu": 2.0, "ledger": b, "preempted": 0}], led)
    assert st["others_cores"] == 0.5 and st["median_s"] == 2.0 and st["preempted_share"] == 0.5
    assert st["stall_share"] == 0.25 and st["cores_used"] == 2.0


def test_json_schemas_accept_reports_and_reject_broken_ones():
    pytest.importorskip("jsonschema")
    import jsonschema

    res = result(peers={"numbanorm": cell(0.9), "torch": {"skipped": "no"}, "numpy": {"error": "boom"}})
    rep = report_of([res])
    _schema.validate(rep, _schema.SCHEMA)
    dash = _export.dashboard(rep)
    _schema.validate(dash, _schema.DASHBOARD_SCHEMA)
    assert {d["unit"] for d in dash} == {"GB/s", "fraction of floor"}
    assert any("ABOVE THE FLOOR" in d["extra"] for d in dash)
    broken = copy.deepcopy(rep)
    del broken["results"][0]["floor"]
    with pytest.raises(jsonschema.ValidationError):
        _schema.validate(broken, _schema.SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        _schema.validate([{"name": "x", "unit": "ms", "value": 1}], _schema.DASHBOARD_SCHEMA)


def test_committed_results_match_the_schema_and_the_readme():
    pytest.importorskip("jsonschema")
    doc = json.loads((ROOT / "docs/bench/bench.json").read_text())
    _schema.validate(doc, _schema.SCHEMA)
    readme = (ROOT / "README.md").read_text()
    block = readme.split(_export.BEGIN, 1)[1].split(_export.END, 1)[0]
    assert block.strip() == _export.readme_summary(doc).strip(), \
        "README results are stale: python -m numbanorm.bench --readme docs/bench/bench.json"


def test_update_readme_replaces_only_the_block(tmp_path):
    rep = report_of([result(peers={"numbanorm": cell(2.0), "torch": cell(4.0)})])
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{_export.BEGIN}\nold\n{_export.END}\noutro\n")
    assert _export.update_readme(path, rep) and not _export.update_readme(path, rep)
    text = path.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| LayerNorm | 1 | 0.50 | 2× |" in text
    (tmp_path / "other.md").write_text("no markers")
    with pytest.raises(ValueError, match="no"):
        _export.update_readme(tmp_path / "other.md", rep)
