"""Render a results JSON as the Markdown tables of docs/performance.md (TFLOP/s per backend per
problem, ratio of ours to a baseline peer) and, with --plot, the PNG beside it.

    python bench/report.py bench/results/<file>.json [--baseline torch.flash] [--plot docs/img/x.png]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from attnplan.bench.results import load


# Each of our backends against the peer it should be judged by: our FlashAttention-2-class kernels
# against FlashAttention-2 (PyTorch SDPA flash), our cuDNN plans against PyTorch's cuDNN path.
PEER_OF = {"nvrtc": "torch.flash", "cudnn": "torch.cudnn"}


def markdown(data: dict, baseline: str | None = None, ours: tuple = ("nvrtc", "cudnn")) -> str:
    table = defaultdict(dict)
    backends = []
    for row in data["rows"]:
        p = row["problem"]
        key = (p["direction"], p["dtype"], p["head_dim"], p["causal"], p["seqlen_q"], p["batch"], p["heads_q"])
        table[key][row["backend"]] = row["tflops"] if row["correct"] else None
        if row["backend"] not in backends:
            backends.append(row["backend"])
    mine = [b for b in backends if b in ours]
    peer = {b: baseline or PEER_OF.get(b, "torch.flash") for b in mine}
    header = ["direction", "d", "causal", "seqlen", "batch x heads"] + backends + [f"{b} / {peer[b]}" for b in mine]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(table):
        direction, dtype, d, causal, s, b, h = key
        cells = [direction, str(d), "yes" if causal else "no", str(s), f"{b} x {h}"]
        values = table[key]
        cells += [f"{values[x]:.0f}" if values.get(x) else ("wrong" if x in values else "-") for x in backends]
        for x in mine:
            ratio = values.get(x) / values[peer[x]] if values.get(x) and values.get(peer[x]) else None
            cells.append(f"**{ratio:.2f}**" if ratio else "-")
        lines.append("| " + " | ".join(cells) + " |")
    device = data["device"]
    head = (f"{device['name']} ({device.get('arch')}, driver {device.get('driver')}), {data['date'][:10]}; "
            f"versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}; ceilings: "
            f"{', '.join(f'{k} {v}' for k, v in data.get('ceilings', {}).items())}")
    return head + "\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--baseline", default=None, help="one peer for every ratio (default: each backend's own peer)")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    data = load(args.results)
    print(markdown(data, args.baseline))
    if args.plot:
        from attnplan.bench.plots import plot
        plot(data, args.plot)


if __name__ == "__main__":
    main()
