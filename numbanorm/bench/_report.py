"""Table, markdown, JSON and PNG output of ``python -m numbanorm.bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _cases

FORMAT = "numbanorm-bench/1"

#: Peer columns: (peer, header). numbanorm is compared allocating-to-allocating with its peers.
GBPS_COLUMNS = (("copy", "copy"), ("numbanorm", "numbanorm"), ("numbanorm-out", "nb out="),
                ("torch", "torch"), ("onnxruntime", "ORT"), ("numpy", "NumPy"))
RATIO_COLUMNS = (("torch", "vs torch"), ("onnxruntime", "vs ORT"), ("numpy", "vs NumPy"))
CATEGORY_TITLES = {"forward": "forward, float32", "backward": "backward (dx, dweight, dbias), float32",
                   "half": "forward, float16 / bfloat16", "family": "RMSNorm, GroupNorm, residual-add LayerNorm"}


def _time(result: dict, peer: str) -> float | None:
    return result["peers"].get(peer, {}).get("time_s")


def _x_bytes(res: dict) -> int:
    return res.get("x_bytes", res["bytes"] // 2)  # older reports: forward float32 only


def _float32_twin(res: dict) -> str | None:
    """Group of the float32 case a half case is the same computation as, e.g.
    ``layer_norm_bf16|NLC|1x16x768`` -> ``layer_norm|NLC|1x16x768``."""
    if res.get("dtype", "float32") == "float32":
        return None
    op = res["op"].rsplit("_", 1)[0]
    return f"{op}|{res['group'].split('|', 1)[1]}"


def table(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: GB/s per peer, numbanorm's speed-up vs each peer, fraction of copy, and
    for half cases numbanorm's speed-up over its own float32 kernel on the same case (same run)."""
    present = set(report["config"]["peers"]) - set(report["missing_peers"])
    gbps = [(p, h) for p, h in GBPS_COLUMNS if p in present]
    ratios = [(p, h) for p, h in RATIO_COLUMNS if p in present and "numbanorm" in present]
    header = ["case", "MB"] + [f"{h} GB/s" for _, h in gbps] + [h for _, h in ratios]
    by_group = {res["group"]: res for res in report["results"]}
    twins = "numbanorm" in present and any(_float32_twin(r) in by_group for r in report["results"])
    if twins:
        header.append("vs f32")
    if "copy" in present and "numbanorm" in present:
        header.append("nb/copy")
    if "copy" in present and "numbanorm-out" in present:
        header.append("out=/copy")
    rows = []
    for res in report["results"]:
        row = [res["group"], f"{_x_bytes(res) / 1e6:.3g}"]
        for peer, _ in gbps:
            entry = res["peers"].get(peer, {})
            row.append(f"{entry['gbps']:.1f}" if "gbps" in entry else ("err" if "error" in entry else "—"))
        nb = _time(res, "numbanorm")
        for peer, _ in ratios:
            other = _time(res, peer)
            row.append(f"{other / nb:.2f}×" if nb and other else "—")
        if twins:
            f32 = _time(by_group.get(_float32_twin(res), {"peers": {}}), "numbanorm")
            row.append(f"{f32 / nb:.2f}×" if nb and f32 else "—")
        for peer in ("numbanorm", "numbanorm-out"):
            if "copy" in present and peer in present:
                frac = res["peers"].get(peer, {}).get("roofline_fraction")
                row.append(f"{frac:.0%}" if frac else "—")
        rows.append(row)
    return header, rows


def notes(report: dict) -> list[str]:
    """Why columns or cells are missing, and which results disagreed or failed."""
    out = [f"{peer}: not run ({why})" for peer, why in report["missing_peers"].items()]
    seen = set()
    for res in report["results"]:
        for peer, entry in res["peers"].items():
            for key in ("error", "note"):
                if key in entry:
                    out.append(f"{peer} on {res['group']}: {entry[key]}")
            if "skipped" in entry and peer not in report["missing_peers"] and entry["skipped"] not in seen:
                seen.add(entry["skipped"])
                out.append(f"{peer}: some cases skipped ({entry['skipped']})")
            if "caveat" in entry and (peer, entry["caveat"]) not in seen:
                seen.add((peer, entry["caveat"]))
                out.append(f"{peer}: {entry['caveat']}")
    return out


def legend(report: dict) -> str:
    m = report["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, {report['config']['threads']} threads, {m['date'][:10]}; "
            f"MB = size of x; GB/s counts the bytes the op must move: x read once + y written once for a "
            f"forward (x, dy, dx for a backward; x, residual, y, x + residual for add_layer_norm), 2 bytes "
            f"per element for f16/bf16; 'vs P' = P's time / numbanorm's (>1: numbanorm faster); 'vs f32' = "
            f"numbanorm float32 time / half time on the same case; nb/copy = numbanorm GB/s / np.copyto GB/s "
            f"in the same run; times are the {report['config']['stat']} of repeats"
            f"{' sampled in turn' if report['config'].get('interleave') else ''}.")


def markdown(report: dict) -> str:
    header, rows = table(report)
    right = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(right) + " |"]
    # GitHub splits table cells at every "|", even inside code spans, unless escaped.
    lines += ["| " + " | ".join(f"`{c.replace('|', chr(92) + '|')}`" if i == 0 else c for i, c in enumerate(row)) + " |"
              for row in rows]
    lines += ["", legend(report)]
    lines += [f"- {n}" for n in notes(report)]
    return "\n".join(lines) + "\n"


def print_table(report: dict, console: Any = None) -> None:
    """Print with rich when installed, else as aligned plain text."""
    header, rows = table(report)
    try:
        from rich.console import Console
        from rich.table import Table
    except Exception:  # noqa: BLE001 - rich is optional
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        for line in [header, *rows]:
            cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            print("  ".join(cells))
        print(legend(report))
    else:
        tab = Table(title="numbanorm benchmarks", caption=legend(report), caption_justify="left")
        for i, h in enumerate(header):
            tab.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in rows:
            tab.add_row(*row)
        (console or Console(width=200)).print(tab)
        print()
    for n in notes(report):
        print(f"note: {n}")


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")


def plot(report: dict, path: Path) -> str | None:
    """Bar chart of GB/s per case and peer (log scale), the copy roofline drawn as a black line.
    Returns None when written, else why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - matplotlib is optional
        return f"matplotlib is not installed ({type(exc).__name__}), no plot"
    results = report["results"]
    peers = [p for p, _ in GBPS_COLUMNS if p != "copy" and any("gbps" in r["peers"].get(p, {}) for r in results)]
    panels: dict[str, list[dict]] = {}  # one row of bars per category (forward, backward, half, family)
    for r in results:
        spec = _cases.OPS.get(r["op"])
        panels.setdefault(spec.category if spec else "other", []).append(r)
    widest = max((len(rs) for rs in panels.values()), default=1)
    width = 0.8 / max(len(peers), 1)
    fig, axes = plt.subplots(len(panels) or 1, 1, squeeze=False, dpi=90,
                             figsize=(max(6.0, 0.55 * widest + 2), 0.3 + 3.9 * max(len(panels), 1)))
    m = report["machine"]
    for (category, rs), ax in zip(panels.items(), axes[:, 0], strict=False):
        for k, peer in enumerate(peers):
            xs = [i - 0.4 + (k + 0.5) * width for i in range(len(rs))]
            ys = [r["peers"].get(peer, {}).get("gbps", 0.0) for r in rs]
            ax.bar(xs, ys, width, label=peer)
        for i, r in enumerate(rs):
            copy = r["peers"].get("copy", {}).get("gbps")
            if copy:
                ax.hlines(copy, i - 0.45, i + 0.45, colors="black", linewidth=1.5,
                          label="np.copyto roofline" if i == 0 else None)
        ax.set_yscale("log")
        ax.set_ylabel("GB/s (bytes the op moves)", fontsize=8)
        ax.set_xlim(-0.6, widest - 0.4)
        ax.set_xticks(range(len(rs)))
        ax.set_xticklabels([r["group"].replace("batch_norm_", "bn_").replace("layer_norm", "ln") for r in rs],
                           rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{CATEGORY_TITLES.get(category, category)} — {m['cpu']}, "
                     f"{report['config']['threads']} threads, {m['date'][:10]}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    try:  # a 64-colour palette keeps the PNG small enough to commit (Pillow comes with matplotlib)
        from PIL import Image

        with Image.open(path) as img:
            small = img.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)
    except Exception:  # noqa: BLE001 - the full-colour PNG is fine too
        pass
    return None
