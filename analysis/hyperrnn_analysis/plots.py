"""The one plotting style of the toolkit: figures with stacked panels sharing the step axis, a run's
raw series faint with its smoothed line over it, marathon task boundaries as dotted lines, one
colour per run. Every plotted line carries a gid ("raw:RUN:COLUMN", "smooth:RUN:COLUMN") so tests
and users can read the data back from the figure.
Leaves out: what is plotted (figures.py).
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                     "axes.spines.right": False, "font.size": 9, "legend.fontsize": 8, "axes.titlesize": 10})
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def color(i):
    return COLORS[i % len(COLORS)]


class Figure:
    """A figure to be written as NAME.png, with a caption for the report."""

    def __init__(self, name, fig, caption):
        self.name, self.fig, self.caption = name, fig, caption

    def save(self, out_dir):
        path = os.path.join(out_dir, self.name + ".png")
        self.fig.savefig(path, bbox_inches="tight")
        plt.close(self.fig)
        return path


def panels(n, width=8.0, height=2.3, sharex=True):
    fig, axes = plt.subplots(n, 1, figsize=(width, height * n + 0.6), sharex=sharex, squeeze=False)
    return fig, [a[0] for a in axes]


def smooth(y, window):
    """Trailing moving average over `window` points, nan-aware (a point with no finite value in
    its window stays nan)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) == 0:
        return y.copy()
    ok = np.isfinite(y)
    c = np.concatenate([[0.0], np.cumsum(np.where(ok, y, 0.0))])
    k = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - window)
    n = k[idx] - k[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (c[idx] - c[lo]) / np.maximum(n, 1), np.nan)


def auto_window(n):
    """The default smoothing: about 1/50 of the run, at least 1."""
    return max(1, n // 50)


def raw_and_smooth(ax, x, y, run, column, i, window):
    ax.plot(x, y, color=color(i), lw=0.6, alpha=0.25, gid=f"raw:{run}:{column}")
    ax.plot(x, smooth(y, window), color=color(i), lw=1.4, label=run, gid=f"smooth:{run}:{column}")


def mark_tasks(ax, boundaries):
    for b in boundaries:
        ax.axvline(b, color="0.4", ls=":", lw=0.8, gid="task-boundary")


def finish(fig, axes, title, legend=True):
    axes[-1].set_xlabel("step")
    if legend and any(a.get_legend_handles_labels()[0] for a in axes):
        axes[0].legend(loc="best")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the title
    return fig


def lines_by_gid(fig):
    """{gid: (x, y)} of every line of the figure that has a gid."""
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid():
                out[line.get_gid()] = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
    return out
