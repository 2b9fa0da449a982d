"""The two pictures of a run (matplotlib, Agg: no display needed).

accuracy_vs_tokens.png — is the extra compute worth it? One curve per route over n,
  tokens per question on a log axis, 95% intervals as bars, the Pareto frontier
  (no other point is both cheaper and more accurate) as a dashed line with rings.
accuracy_vs_n.png — how each route scales with n, with coverage@n (the ceiling a sound
  checker could reach) dotted in the same colour.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from itsproxy.proxy.eval.report import Summary  # noqa: E402


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (fewer tokens, higher accuracy), by tokens."""
    best = -1.0
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _by_route(summaries: list[Summary]) -> dict[str, list[Summary]]:
    """Per route, the (route, n) groups that answered at least once (all-error groups are the table's)."""
    out: dict[str, list[Summary]] = {}
    for s in summaries:
        if s.errors < s.questions:
            out.setdefault(s.route, []).append(s)
    return out


def _labels(group: list[Summary]) -> dict[tuple[float, float], str]:
    """One label per distinct point: 'n=1,3,9' where several n landed on the same spot."""
    out: dict[tuple[float, float], list[str]] = {}
    for s in group:
        if s.n is not None and s.tokens is not None:
            out.setdefault((s.tokens, s.accuracy), []).append(str(s.n))
    return {xy: "n=" + ",".join(ns) for xy, ns in out.items()}


def _plain_log_ticks(axis) -> None:
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain)


def _legend_or_note(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=9)
    else:
        ax.text(0.5, 0.5, "nothing to plot here\n(no answered (route, n) with these figures)", ha="center",
                va="center", transform=ax.transAxes, color="0.4")


def accuracy_vs_tokens(summaries: list[Summary], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    points = []
    for i, (route, group) in enumerate(_by_route(summaries).items()):
        group = sorted([s for s in group if s.tokens], key=lambda s: s.tokens or 0)
        if not group:
            continue
        xs, ys = [float(s.tokens or 0) for s in group], [s.accuracy for s in group]
        err = [[s.accuracy - s.ci_low for s in group], [s.ci_high - s.accuracy for s in group]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=route, color=f"C{i}", linewidth=1.8,
                    elinewidth=1, ecolor=to_rgba(f"C{i}", 0.45))
        for j, ((x, y), text) in enumerate(_labels(group).items()):  # alternate below/above: neighbours
            ax.annotate(text, (x, y), textcoords="offset points", fontsize=8, color=f"C{i}",
                        xytext=(6, -13 - 9 * (i % 3)) if j % 2 == 0 else (6, 6 + 9 * (i % 3)))
        points += list(zip(xs, ys))
    front = pareto(points)
    if front:
        ax.plot(*zip(*front), linestyle="--", color="0.3", linewidth=1, zorder=0, label="Pareto frontier")
        fx, fy = zip(*front)
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="0.2", linewidths=1.2, zorder=3)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("tokens per question (prompt + completion, all calls; log scale)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(-0.02, 1.1)  # room for the labels of points at 1.0
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend_or_note(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _n_of(s: Summary) -> float | None:
    """The n asked for, or where none was (the route's own), the candidates it drew on average."""
    return s.n if s.n is not None else (round(s.candidates, 1) if s.candidates else None)


def accuracy_vs_n(summaries: list[Summary], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ns = sorted({x for s in summaries if (x := _n_of(s)) is not None})
    for i, (route, group) in enumerate(_by_route(summaries).items()):
        group = sorted([s for s in group if _n_of(s) is not None], key=lambda s: _n_of(s) or 0)
        if not group:
            continue
        if all(s.candidates == 1 for s in group):  # a single call whatever n asked (passthrough): a baseline
            ax.axhline(group[0].accuracy, color=f"C{i}", linestyle="-.", linewidth=1.2,
                       label=f"{route} (one call, any n)")
            continue
        xs = [float(_n_of(s) or 0) for s in group]
        err = [[s.accuracy - s.ci_low for s in group], [s.ci_high - s.accuracy for s in group]]
        ax.errorbar(xs, [s.accuracy for s in group], yerr=err, marker="o", capsize=3, color=f"C{i}",
                    label=f"{route} accuracy", linewidth=1.8, elinewidth=1,
                    ecolor=to_rgba(f"C{i}", 0.45))
        cov = [(_n_of(s), s.coverage) for s in group if s.coverage is not None]
        if cov:
            ax.plot(*zip(*cov), linestyle=":", marker="^", color=f"C{i}", alpha=0.8, label=f"{route} coverage@n")
    if ns:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [f"{n:g}" for n in ns])
    ax.set_xlabel("n (as requested; for a route at its own n, the candidates it drew)")
    ax.set_ylabel("share of questions")
    ax.set_ylim(-0.02, 1.1)  # room for the labels of points at 1.0
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_or_note(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
