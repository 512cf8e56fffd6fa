"""The PNG of ``python -m numbanorm.bench``: fraction of floor per case and peer, one panel per op
family, each as wide as its number of cases, on a linear axis."""

from __future__ import annotations

from pathlib import Path

from . import _analysis, _floors
from ._registry import PEERS

CATEGORY_TITLES = {"forward": "forward, float32", "backward": "backward (dx, dweight, dbias), float32",
                   "half": "forward, float16 / bfloat16", "family": "RMSNorm, GroupNorm, add + LayerNorm"}
#: Bars are clipped here; a fraction above FLOOR_SUSPECT is a wrong floor, drawn as a red cap.
Y_MAX = 1.2


def _short(group: str) -> str:
    return group.replace("batch_norm_", "bn_").replace("layer_norm", "ln").replace("_backward", "_bwd")


def plot(report: dict, path: Path) -> str | None:
    """Write the PNG; None when written, else why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - matplotlib is optional
        return f"matplotlib is not installed ({type(exc).__name__}), no plot"
    results = report["results"]
    peers = [p for p in PEERS if any("floor_fraction" in r["peers"].get(p, {}) for r in results)]
    panels: dict[str, list[dict]] = {}
    for r in results:
        panels.setdefault(r.get("category", "other"), []).append(r)
    widest = max((len(rs) for rs in panels.values()), default=1)
    fig = plt.figure(figsize=(2.5 + 0.62 * widest, 0.6 + 3.4 * max(len(panels), 1)), dpi=90)
    grid = fig.add_gridspec(max(len(panels), 1), widest + 3, hspace=1.35, left=0.06, right=0.99, top=0.95,
                            bottom=0.1)
    colours = {p: plt.cm.tab10(k) for k, p in enumerate(PEERS)}
    for row, (category, rs) in enumerate(panels.items()):
        _panel(fig.add_subplot(grid[row, :max(len(rs), 2)]), CATEGORY_TITLES.get(category, category), rs,
               peers, colours)
    m = report["machine"]
    fig.suptitle(f"{m['cpu']}, {report['config']['threads']} threads, {m['date'][:10]} — hatched: unstable, "
                 f"red ▼: above {_floors.FLOOR_SUSPECT:g} (wrong floor)", fontsize=8, y=1.0, va="bottom")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    _shrink(path)
    return None


def _panel(ax, title: str, rs: list[dict], peers: list[str], colours: dict) -> None:
    """One op family: a group of bars (one per peer) per case, clipped at :data:`Y_MAX`."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    width = 0.8 / max(len(peers), 1)
    drawn: list[str] = []
    for k, peer in enumerate(peers):
        for i, r in enumerate(rs):
            e = r["peers"].get(peer, {})
            f = e.get("floor_fraction")
            if f is None:
                continue
            x = i - 0.4 + (k + 0.5) * width
            shaky = _analysis.unstable(e) or r["roofline"].get("unstable")
            ax.bar(x, min(f, Y_MAX), width, color=colours[peer], hatch="///" if shaky else None,
                   edgecolor="white" if shaky else None)
            if peer not in drawn:
                drawn.append(peer)
            if f > _floors.FLOOR_SUSPECT:
                ax.plot(x, Y_MAX, marker="v", color="red", markersize=5)
    ax.axhline(1.0, color="black", linewidth=1.0)
    ax.set_ylim(0, Y_MAX)
    ax.set_xlim(-0.6, len(rs) - 0.4)
    ax.set_ylabel("fraction of floor", fontsize=8)
    ax.set_xticks(range(len(rs)))
    ax.set_xticklabels([_short(r["group"]) for r in rs], rotation=55, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)
    handles = [Patch(color=colours[p], label=p) for p in drawn]
    handles += [Line2D([], [], color="black", label="floor at copy speed"),
                Patch(facecolor="grey", hatch="///", edgecolor="white", label="unstable (~)")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _shrink(path: Path) -> None:
    """A 128-colour palette keeps the PNG small enough to commit (Pillow comes with matplotlib)."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            small = img.convert("RGB").quantize(colors=128)
        small.save(path, optimize=True)
    except Exception:  # noqa: BLE001 - the full-colour PNG is fine too
        pass
