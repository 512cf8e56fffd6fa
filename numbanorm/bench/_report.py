"""Table, legend, notes and markdown of ``python -m numbanorm.bench`` (from the JSON report)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _analysis, _floors

FORMAT = "numbanorm-bench/2"
#: Peers compared with numbanorm, with their short names, in column order.
OTHERS = (("torch", "torch"), ("onnxruntime", "ORT"), ("jax", "JAX"), ("openvino", "OV"), ("numpy", "NumPy"))
COPY_TAGS = {"copy": "", "copy-nt": " nt", "copy-1t": " 1t"}
UNSTABLE = "~"
SUSPECT = "floor!"
#: Table border and padding of rich's default box: 1 border per column + 1, 2 spaces per column.
BORDER, PADDING = 1, 2


@dataclass(frozen=True)
class Column:
    header: str
    priority: int  # 0 = always shown; the largest is dropped first when the table is too wide
    cell: Callable[[dict], str]


def _mark(entry: dict, text: str) -> str:
    return UNSTABLE + text if _analysis.unstable(entry) else text


def _frac(peer: str) -> Callable[[dict], str]:
    def cell(res: dict) -> str:
        e = res["peers"].get(peer, {})
        if e.get("floor_suspect"):
            return SUSPECT
        f = e.get("floor_fraction")
        if f is None:
            return "err" if "error" in e else "—"
        return (UNSTABLE if _analysis.unstable(e) or res["roofline"].get("unstable") else "") + f"{f:.2f}"
    return cell


def _ratio(peer: str) -> Callable[[dict], str]:
    def cell(res: dict) -> str:
        nb, other = res["peers"].get("numbanorm", {}), res["peers"].get(peer, {})
        if not nb.get("time_s") or not other.get("time_s"):
            return "—"
        text = f"{other['time_s'] / nb['time_s']:.2f}×"
        return UNSTABLE + text if _analysis.unstable(nb) or _analysis.unstable(other) else text
    return cell


def _gbps(peer: str) -> Callable[[dict], str]:
    def cell(res: dict) -> str:
        e = res["peers"].get(peer, {})
        return _mark(e, f"{e['gbps']:.1f}") if "gbps" in e else "—"
    return cell


def _roof(res: dict) -> str:
    roof = res["roofline"]
    if "gbps" not in roof:
        return "—"
    text = f"{roof['gbps']:.1f}{COPY_TAGS.get(roof['used'], '')}"
    return UNSTABLE + text if roof.get("unstable") else text


def _float32_twin(res: dict) -> str | None:
    """Group of the float32 case a half case is the same computation as."""
    if res.get("dtype", "float32") == "float32":
        return None
    return f"{res['op'].rsplit('_', 1)[0]}|{res['group'].split('|', 1)[1]}"


def columns(report: dict) -> list[Column]:
    """The columns this report has data for, in display order."""
    present = set(report["config"]["peers"]) - set(report["missing_peers"])
    by_group = {r["group"]: r for r in report["results"]}
    cols = [Column("case", 0, lambda r: r["group"]),
            Column("MB", 14, lambda r: f"{r['x_bytes'] / 1e6:.3g}"),
            Column("floor", 7, lambda r: f"{r['floor']['copies_of_x']:g}×"),
            Column("roof GB/s", 3, _roof)]
    if "numbanorm" in present:
        cols += [Column("nb GB/s", 8, _gbps("numbanorm")), Column("nb/floor", 1, _frac("numbanorm"))]
    if "numbanorm-out" in present:
        cols.append(Column("out=/floor", 13, _frac("numbanorm-out")))
    for k, (peer, short) in enumerate(OTHERS):
        if peer in present:
            cols.append(Column(f"{short}/floor", 9 + k if peer != "numpy" else 16, _frac(peer)))
    for k, (peer, short) in enumerate(OTHERS):
        if peer in present and "numbanorm" in present:
            cols.append(Column(f"vs {short}", 2 + k if peer != "numpy" else 15, _ratio(peer)))
    if "numbanorm" in present and any(_float32_twin(r) in by_group for r in report["results"]):
        def vs_f32(res: dict) -> str:
            f32 = by_group.get(_float32_twin(res), {}).get("peers", {}).get("numbanorm", {}).get("time_s")
            nb = res["peers"].get("numbanorm", {}).get("time_s")
            return f"{f32 / nb:.2f}×" if f32 and nb else "—"
        cols.append(Column("vs f32", 17, vs_f32))
    return cols


def table(report: dict, width: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows; with ``width``, the least important columns dropped until it fits."""
    cols = columns(report)
    rows = [[c.cell(res) for c in cols] for res in report["results"]]
    keep = list(range(len(cols)))
    if width is not None:
        widths = [max([len(c.header)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        keep = fit_columns(widths, [c.priority for c in cols], width)
    return [cols[i].header for i in keep], [[r[i] for i in keep] for r in rows]


def table_width(widths: list[int]) -> int:
    """Width of a rich table (default box, padding 1) whose columns are ``widths`` wide."""
    return sum(widths) + PADDING * len(widths) + BORDER * (len(widths) + 1)


def fit_columns(widths: list[int], priorities: list[int], width: int) -> list[int]:
    """Indices of the columns kept so that the table fits in ``width``: the columns with the
    largest priority number go first; priority-0 columns always stay."""
    keep = list(range(len(widths)))
    for i in sorted(keep, key=lambda i: -priorities[i]):
        if table_width([widths[k] for k in keep]) <= width:
            break
        if priorities[i] > 0:
            keep.remove(i)
    return keep


def legend(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    return (
        f"{m['cpu']}, {m['cores']} cores, {cfg['threads']} threads, {m['date'][:10]}. "
        f"MB = size of x. floor = bytes the op must move, in copies of x: "
        + "; ".join(_floors.legend_lines())
        + f". roof GB/s = the fastest copy of the floor's bytes in the same run: "
        f"{cfg['threads']}-thread memcpy slices (numba prange), the same with streaming stores ('nt'), or "
        f"one-thread memcpy ('1t'). "
        f"P/floor = fraction of floor = roofline time / P's time (1 = moving only the floor's bytes at copy "
        f"speed); '{SUSPECT}' = above {_floors.FLOOR_SUSPECT:g}: the floor or the roofline is wrong for that "
        f"case. vs P = P's time / numbanorm's (> 1: numbanorm faster). nb = numbanorm, out= = numbanorm "
        f"writing into out= buffers. '{UNSTABLE}' = unstable: median > {_analysis.SPREAD:g}x the min in two "
        f"measurements, or > {_analysis.NEIGHBOUR_FACTOR:g}x below its GB/s on the neighbouring sizes and not "
        f"repeated, or "
        f"repeated only on a busy machine. Op times are the "
        f"{cfg['stat']} of samples taken in turn, each library in its own process.")


def _isolation_note(report: dict) -> list[str]:
    iso = report.get("isolation") or {}
    if not iso:
        return []
    worst = iso.get("max_others_cores", 0.0)
    idle = ", ".join(f"{lib} {v['idle_cores']:.4f}" for lib, v in sorted(iso.get("workers", {}).items()))
    busy = iso.get("busy_share")
    load = ([f"machine load: threads waited for a CPU {busy:.0%} of a cell's sampling time (median over the "
             f"cells){'; a busy machine, other processes ran' if busy > _analysis.BUSY_STALL else ''}"]
            if busy is not None else [])
    return load + [f"isolation: while a cell was sampled, the other libraries' processes used at most "
            f"{worst:.3f} cores (mean {iso.get('mean_others_cores', 0.0):.4f}); idle CPU of each worker, in "
            f"cores: {idle}; machine load (1 min) {report['machine'].get('load_avg_1m')} at the start, "
            f"{iso.get('load_avg_1m_end')} at the end"]


def notes(report: dict) -> list[str]:
    """Missing peers, failures, disagreements, caveats, suspect floors, unstable cells, isolation."""
    out = [f"{peer}: not run ({why})" for peer, why in report["missing_peers"].items()]
    seen: set = set()
    for res in report["results"]:
        for peer, entry in _analysis.cells(res):
            for key in ("error", "note"):
                if key in entry:
                    out.append(f"{peer} on {res['group']}: {entry[key]}")
            if "skipped" in entry and peer not in report["missing_peers"] and entry["skipped"] not in seen:
                seen.add(entry["skipped"])
                out.append(f"{peer}: some cases skipped ({entry['skipped']})")
            if "caveat" in entry and (peer, entry["caveat"]) not in seen:
                seen.add((peer, entry["caveat"]))
                out.append(f"{peer}: {entry['caveat']}")
            if entry.get("floor_suspect"):
                out.append(f"{peer} on {res['group']}: {entry['floor_fraction']:.2f} of its floor "
                           f"({res['floor']['moves']}): the floor or the roofline is wrong for this case")
            if _analysis.unstable(entry):
                out.append(f"unstable: {peer} on {res['group']}: {entry.get('unstable_why', '')}")
        if res["roofline"].get("unstable"):
            used = res["roofline"]["copies"][res["roofline"]["used"]]
            out.append(f"unstable roofline on {res['group']}: {res['roofline']['used']}: "
                       f"{_analysis.spread_flag(used)}; its fractions of floor are marked too")
    return out + _isolation_note(report)


def markdown(report: dict) -> str:
    """The whole table (every column), the legend and the notes."""
    header, rows = table(report)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    # GitHub splits table cells at every "|", even inside code spans, unless escaped.
    lines += ["| " + " | ".join(f"`{c.replace('|', chr(92) + '|')}`" if i == 0 else c for i, c in enumerate(row))
              + " |" for row in rows]
    lines += ["", legend(report), ""] + [f"- {n}" for n in notes(report)]
    return "\n".join(lines) + "\n"


def print_table(report: dict, console: Any = None) -> None:
    """Print with rich at its own width when installed, else as aligned plain text (80 columns)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except Exception:  # noqa: BLE001 - rich is optional
        header, rows = table(report, width=80)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        for line in [header, *rows]:
            cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            print("  ".join(cells))
        print(legend(report))
    else:
        console = console or Console()
        header, rows = table(report, width=console.width)
        tab = Table(title="numbanorm benchmarks", caption=legend(report), caption_justify="left")
        for i, h in enumerate(header):
            tab.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            tab.add_row(*row)
        console.print(tab)
        dropped = len(columns(report)) - len(header)
        if dropped:
            console.print(f"({dropped} more columns in bench.md; a wider terminal shows them)")
    for n in notes(report):
        print(f"note: {n}")


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")
