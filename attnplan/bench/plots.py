"""PNG plots: TFLOP/s against seqlen per backend, one panel per (direction, head dim, causal)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def plot(results: dict, path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(lambda: defaultdict(list))
    for row in results["rows"]:
        if not row.get("tflops"):
            continue
        p = row["problem"]
        key = (p["direction"], p["dtype"], p["head_dim"], p["causal"], "+".join(p.get("features") or []))
        panels[key][row["backend"]].append((p["seqlen_q"], row["tflops"]))
    keys = sorted(panels)
    if not keys:
        raise ValueError("no timed rows to plot")
    names = sorted({b for panel in panels.values() for b in panel})
    colors = {b: f"C{i % 10}" for i, b in enumerate(names)}       # one colour per backend in every panel
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for backend, points in sorted(panels[key].items()):
            points.sort()
            ax.plot([s for s, _ in points], [t for _, t in points], marker="o", label=backend,
                    color=colors[backend], linestyle="--" if "." in backend else "-")
        direction, dtype, head_dim, causal, features = key
        ax.set_title(f"{direction} {dtype} d{head_dim}{' causal' if causal else ''}{' ' + features if features else ''}",
                     fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("seqlen")
        ax.set_ylabel("TFLOP/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{results['device']['name']}  {results['date'][:10]}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
