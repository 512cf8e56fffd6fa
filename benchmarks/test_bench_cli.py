"""``python -m numbanorm.bench`` on tiny shapes: outputs, format, and no crash without optional peers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from numbanorm.bench import _cases, main


def _run(tmp_path, *args):
    out = tmp_path / "out"
    assert main(["--smoke", "--budget", "0", "--out", str(out), *args]) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report_files_and_format(tmp_path, capsys):
    out, report = _run(tmp_path, "--ops", "layer_norm", "--threads", "1")
    assert report["format"] == "numbanorm-bench/1"
    assert report["config"]["threads"] == report["machine"]["threads"] == 1
    assert report["machine"]["versions"]["numba"] and report["machine"]["cores"] >= 1
    groups = [r["group"] for r in report["results"]]
    assert groups == [c.group for c in _cases.grid("smoke", ("layer_norm",))]
    for res in report["results"]:
        nb, copy = res["peers"]["numbanorm"], res["peers"]["copy"]
        assert nb["rel_l2_error"] <= _cases.AGREE_TOL
        assert nb["gbps"] == pytest.approx(res["bytes"] / nb["time_s"] / 1e9)
        assert nb["roofline_fraction"] == pytest.approx(copy["time_s"] / nb["time_s"])
        assert nb["min_s"] <= nb["median_s"] <= nb["max_s"] and nb["repeats"] >= 3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "bench.png").exists()
    else:
        assert (out / "bench.png").stat().st_size > 1000
    md = (out / "bench.md").read_text()
    assert md.count("\n| `") == len(groups) and "nb/copy" in md
    printed = capsys.readouterr().out
    assert "layer_norm|NLC|3x29x768" in printed


def test_runtime_dependencies_only(tmp_path, monkeypatch, capsys):
    # None in sys.modules makes `import x` (and `import x.y`) fail, as if x were not installed.
    blocked = ("torch", "onnxruntime", "onnx", "matplotlib", "rich")
    for name in [m for m in sys.modules if m.split(".")[0] in blocked] + list(blocked):
        monkeypatch.setitem(sys.modules, name, None)
    out, report = _run(tmp_path, "--ops", "batch_norm_train")
    assert set(report["missing_peers"]) == {"torch", "onnxruntime"}
    assert all(set(r["peers"]) == {"numbanorm", "numbanorm-out", "numpy", "copy"} for r in report["results"])
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("case"))
    assert "torch" not in header and "ORT" not in header and "vs NumPy" in header
    assert "note: torch: not run" in printed and "no plot" in printed
    assert not (out / "bench.png").exists()


def test_bad_arguments_exit_2(tmp_path):
    assert main(["--ops", "nope", "--out", str(tmp_path)]) == 2
    assert main(["--peers", "numbanorm,nope", "--out", str(tmp_path)]) == 2


def test_backward_half_family_interleaved(tmp_path, capsys):
    ops = "layer_norm_backward,layer_norm_bf16,add_layer_norm"
    out, report = _run(tmp_path, "--ops", ops, "--peers", "numbanorm,numpy,copy", "--interleave", "--no-plot")
    assert report["config"]["interleave"] and [r["op"] for r in report["results"]] == [
        c.op for c in _cases.grid("smoke", tuple(ops.split(",")))]
    for res in report["results"]:
        spec = _cases.OPS[res["op"]]
        assert res["dtype"] == spec.dtype and res["traffic"] == spec.traffic
        itemsize = 2 if spec.dtype == "bfloat16" else 4
        assert res["x_bytes"] == itemsize * np.prod(res["shape"]) and res["bytes"] == spec.traffic * res["x_bytes"]
        nb, copy = res["peers"]["numbanorm"], res["peers"]["copy"]
        assert nb["repeats"] >= 3 and nb["rel_l2_error"] <= _cases.HALF_TOL.get(spec.dtype, _cases.AGREE_TOL)
        # the op moves traffic/2 times the bytes of the copy
        assert nb["roofline_fraction"] == pytest.approx(spec.traffic / 2 * copy["time_s"] / nb["time_s"])
        if spec.dtype != "float32":
            assert "float32" in res["peers"]["numpy"]["caveat"]
    printed = capsys.readouterr().out
    assert "threads: " in printed and "machine: " in printed
    assert "numpy: half input computed in float32" in printed


def test_op_aliases():
    assert _cases.expand_ops(("backward", "rms_norm")) == ("layer_norm_backward", "batch_norm_train_backward",
                                                           "rms_norm")
    assert {c.spec.dtype for c in _cases.grid("quick", ("half",))} == {"float16", "bfloat16"}
    with pytest.raises(ValueError, match="unknown ops"):
        _cases.grid("quick", ("layer_norm_f64",))


def test_bfloat16_without_ml_dtypes_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    _, report = _run(tmp_path, "--ops", "batch_norm_train_bf16", "--peers", "numbanorm,copy", "--no-plot")
    assert report["results"] and all("ml_dtypes is not installed" in e["skipped"]
                                     for r in report["results"] for e in r["peers"].values())


def test_table_half_vs_float32_column():
    from numbanorm.bench import _report

    def res(op, dtype, t):
        return {"group": f"{op}|NLC|2x3x4", "op": op, "dtype": dtype, "x_bytes": 96, "bytes": 192,
                "peers": {"numbanorm": {"time_s": t, "gbps": 1.0}}}

    report = {"config": {"peers": ["numbanorm"], "threads": 1, "stat": "median"}, "missing_peers": {},
              "machine": {"cpu": "cpu", "cores": 1, "date": "2026-01-01"},
              "results": [res("layer_norm", "float32", 3.0), res("layer_norm_bf16", "bfloat16", 2.0),
                          res("rms_norm", "float32", 1.0)]}
    header, rows = _report.table(report)
    col = header.index("vs f32")
    assert [r[col] for r in rows] == ["—", "1.50×", "—"]
    assert [r[1] for r in rows] == ["9.6e-05"] * 3  # MB is x's size, whatever the traffic
