"""``python -m numbanorm.bench`` end to end on tiny shapes: outputs, formats, isolation, and no crash
without optional peers. (No timing is asserted: these runs only check what the report contains.)"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from numbanorm.bench import _cases, _schema, main

FAST = ["--smoke", "--budget", "0", "--wait", "0"]


def _run(tmp_path, *args):
    out = tmp_path / "out"
    assert main([*FAST, "--out", str(out), *args]) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report_files_and_formats(tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")  # noqa: F841
    out, report = _run(tmp_path, "--ops", "layer_norm", "--threads", "1", "--peers", "numbanorm,numpy",
                       "--no-remeasure")
    _schema.validate(report, _schema.SCHEMA)
    _schema.validate(json.loads((out / "dashboard.json").read_text()), _schema.DASHBOARD_SCHEMA)
    assert report["config"]["threads"] == report["machine"]["threads"] == 1
    assert [r["group"] for r in report["results"]] == [c.group for c in _cases.grid("smoke", ("layer_norm",))]
    for res in report["results"]:
        roof, nb = res["roofline"], res["peers"]["numbanorm"]
        assert res["floor"]["arrays"] == 2 and res["floor"]["bytes"] == 2 * res["x_bytes"]
        assert roof["time_s"] == min(c["median_s"] for c in roof["copies"].values() if "median_s" in c)
        assert nb["floor_fraction"] == pytest.approx(roof["time_s"] / nb["time_s"])
        assert nb["gbps"] == pytest.approx(res["floor"]["bytes"] / nb["time_s"] / 1e9)
        assert nb["min_s"] <= nb["median_s"] <= nb["max_s"] and nb["repeats"] >= 5
    iso = report["isolation"]
    assert set(iso["workers"]) == {"numbanorm", "numpy", "roofline"} and iso["quiesce"]
    md = (out / "bench.md").read_text()
    assert md.count("\n| `") == len(report["results"]) and "nb/floor" in md and "isolation:" in md
    assert "layer_norm|NLC|3x29x768" in capsys.readouterr().out


def test_runtime_dependencies_only(tmp_path, monkeypatch, capsys):
    # None in sys.modules makes `import x` fail and find_spec(x) say "not installed".
    blocked = ("torch", "onnxruntime", "onnx", "jax", "jaxlib", "openvino", "matplotlib", "rich")
    for name in [m for m in sys.modules if m.split(".")[0] in blocked] + list(blocked):
        monkeypatch.setitem(sys.modules, name, None)
    out, report = _run(tmp_path, "--ops", "batch_norm_train", "--no-remeasure")
    assert set(report["missing_peers"]) == {"torch", "onnxruntime", "jax", "openvino"}
    assert all(set(r["peers"]) == {"numbanorm", "numbanorm-out", "numpy"} for r in report["results"])
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("case"))
    assert "torch" not in header and "ORT" not in header
    assert "note: torch: not run" in printed and "no plot" in printed
    assert not (out / "bench.png").exists()


def test_bad_arguments_exit_2(tmp_path):
    assert main(["--ops", "nope", "--out", str(tmp_path)]) == 2
    assert main(["--peers", "numbanorm,nope", "--out", str(tmp_path)]) == 2


def test_backward_half_family_floors_and_remeasure(tmp_path):
    ops = "layer_norm_backward,layer_norm_bf16,add_layer_norm"
    _, report = _run(tmp_path, "--ops", ops, "--peers", "numbanorm,numpy", "--no-plot")
    assert [r["op"] for r in report["results"]] == [c.op for c in _cases.grid("smoke", tuple(ops.split(",")))]
    arrays = {"layer_norm_backward": 3, "layer_norm_bf16": 2, "add_layer_norm": 4}
    for res in report["results"]:
        spec = _cases.OPS[res["op"]]
        itemsize = 2 if spec.dtype == "bfloat16" else 4
        assert res["dtype"] == spec.dtype and res["x_bytes"] == itemsize * np.prod(res["shape"])
        assert res["floor"]["arrays"] == arrays[res["op"]]
        nb = res["peers"]["numbanorm"]
        assert nb["rel_l2_error"] <= _cases.agree_tol(_cases.Case(res["op"], res["layout"], tuple(res["shape"])))
        if spec.dtype != "float32":
            assert "float32" in res["peers"]["numpy"]["caveat"]
        for entry in [*res["peers"].values(), *res["roofline"]["copies"].values()]:
            if entry.get("remeasured"):  # a re-measured cell keeps its first measurement and the reason
                assert entry["first"]["median_s"] and entry["suspect_why"]


def test_op_aliases():
    assert _cases.expand_ops(("backward", "rms_norm")) == ("layer_norm_backward", "batch_norm_train_backward",
                                                           "rms_norm")
    assert {c.spec.dtype for c in _cases.grid("quick", ("half",))} == {"float16", "bfloat16"}
    with pytest.raises(ValueError, match="unknown ops"):
        _cases.grid("quick", ("layer_norm_f64",))


def test_bfloat16_without_ml_dtypes_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    _, report = _run(tmp_path, "--ops", "batch_norm_train_bf16", "--peers", "numbanorm", "--no-plot")
    cells = [e for r in report["results"] for e in [*r["peers"].values(), *r["roofline"]["copies"].values()]]
    assert cells and all("ml_dtypes" in e["skipped"] for e in cells)


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "usage: python -m numbanorm.bench" in text and "--readme" in text
    assert "``" not in text and ":mod:" not in text and ":data:" not in text
