"""Search plots: architecture heatmaps (softmaxed alphas, edges x ops) and the collapse signals per epoch.

matplotlib is optional and imported only when a plot is drawn. The figure is built with
``matplotlib.figure.Figure`` and rendered by ``FigureCanvasAgg`` directly: pyplot is never imported,
so no global figure state is created and the backend a user has chosen is left as it is.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import List, Mapping, Sequence, Union

import numpy as np

from fastnas.spaces.darts import STEPS, node_edge_slices
from fastnas.spaces.nb201 import NB201_EDGES

__all__ = ["save_arch_heatmap", "save_collapse_plot", "edge_labels_darts", "edge_labels_nb201"]


def _darts_state_name(state: int) -> str:
    # States 0 and 1 are the cell inputs c_{k-2}, c_{k-1}; state s >= 2 is intermediate node n{s}.
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(state, f"n{state}")


def edge_labels_darts(steps: int = STEPS) -> List[str]:
    """Row labels for DARTS alphas, in edge order (:func:`fastnas.spaces.darts.node_edge_slices`):
    ``'n2<-c_{k-2}', 'n2<-c_{k-1}', 'n3<-c_{k-2}', 'n3<-c_{k-1}', 'n3<-n2', ...``. Intermediate node i
    (0-based) is state ``n{i+2}`` and takes one edge from each state 0..i+1. 14 labels for 4 steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    labels = []
    for node, s in enumerate(node_edge_slices(steps)):
        for src in range(s.stop - s.start):
            labels.append(f"n{node + 2}<-{_darts_state_name(src)}")
    return labels


def edge_labels_nb201() -> List[str]:
    """Row labels for NB201 alphas, in ``NB201_EDGES`` order: ``'1<-0', '2<-0', '2<-1', '3<-0', '3<-1',
    '3<-2'`` (``to<-from``, node 0 the cell input)."""
    return [f"{to}<-{frm}" for to, frm in NB201_EDGES]


def _as_matrix(name, m) -> np.ndarray:
    if hasattr(m, "detach"):  # torch tensor (any device / dtype)
        m = m.detach().cpu().double().numpy()
    a = np.asarray(m, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"matrix {name!r} must be 2-D and non-empty, got shape {a.shape}")
    return a


def save_arch_heatmap(path: Union[str, "os.PathLike[str]"], matrices: Mapping[str, object],
                      row_labels: Union[Mapping[str, Sequence[str]], Sequence[str]], col_labels: Sequence[str],
                      title: str = "", cmap: str = "viridis", dpi: int = 100) -> Path:
    """Writes one PNG with one annotated heatmap per named matrix; returns the path written.

    ``matrices``: name -> (rows, cols) array or tensor, e.g. ``{'normal': softmax(alpha_normal),
    'reduce': softmax(alpha_reduce)}`` (14 x 8) or ``{'cell': softmax(alphas)}`` for NB201 (6 x 5).
    ``row_labels``: one list shared by all matrices, or a dict name -> list (see
    :func:`edge_labels_darts`, :func:`edge_labels_nb201`). ``col_labels``: the op names (one per
    column). Every cell is annotated with its value to 2 decimals; all panels share one colour scale
    (min..max over all matrices, so panels compare) and each has a colorbar.

    The parent folder is created if needed, and the file is written atomically: rendered to a temporary
    file in the same folder, then moved over ``path`` with ``os.replace`` (a reader never sees a
    half-written PNG, and no temporary file is left behind on error). Raises ``ImportError`` if
    matplotlib is not installed, ``ValueError`` for inconsistent shapes or labels.
    """
    if not matrices:
        raise ValueError("save_arch_heatmap needs at least one matrix")
    mats = {str(name): _as_matrix(name, m) for name, m in matrices.items()}
    col_labels = [str(c) for c in col_labels]
    rows_by_name = {}
    for name, a in mats.items():
        if isinstance(row_labels, Mapping):
            if name not in row_labels:
                raise ValueError(f"row_labels has no entry for matrix {name!r} (has {list(row_labels)})")
            rl = row_labels[name]
        else:
            rl = row_labels
        rl = [str(r) for r in rl]
        if len(rl) != a.shape[0]:
            raise ValueError(f"matrix {name!r} has {a.shape[0]} rows but {len(rl)} row labels")
        if len(col_labels) != a.shape[1]:
            raise ValueError(f"matrix {name!r} has {a.shape[1]} columns but {len(col_labels)} column labels")
        rows_by_name[name] = rl

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("save_arch_heatmap needs matplotlib: pip install matplotlib") from e

    finite = np.concatenate([a[np.isfinite(a)] for a in mats.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    norm = Normalize(vmin=vmin, vmax=vmax)

    n = len(mats)
    max_rows = max(a.shape[0] for a in mats.values())
    max_cols = max(a.shape[1] for a in mats.values())
    width = n * (1.6 + 0.75 * max_cols + 0.15 * max(len(r) for rl in rows_by_name.values() for r in rl))
    height = 1.6 + 0.42 * max_rows + 0.08 * max(len(c) for c in col_labels)
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, a) in zip(axes, mats.items()):
        im = ax.imshow(a, cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(a.shape[1]))
        ax.set_xticklabels(col_labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(a.shape[0]))
        ax.set_yticklabels(rows_by_name[name])
        ax.set_xlabel("op")
        ax.set_ylabel("edge")
        ax.set_title(name)
        colormap = im.get_cmap()
        for r in range(a.shape[0]):
            for c in range(a.shape[1]):
                v = a[r, c]
                if np.isfinite(v):
                    red, green, blue, _ = colormap(norm(v))
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                    color = "white" if dark else "black"
                else:
                    color = "black"
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)

    return _save_png_atomically(fig, path, dpi)


def _save_png_atomically(fig, path, dpi: int) -> Path:
    """Renders ``fig`` to a temporary file next to ``path`` and moves it over ``path`` (os.replace)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL on a fresh random name (like mkstemp), but mode 0o666 so that the umask applies and the
    # PNG gets the permissions of any other file the user writes (mkstemp would leave it 0o600).
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return out


def save_collapse_plot(path: Union[str, "os.PathLike[str]"], history: Sequence[Mapping[str, object]],
                       title: str = "", dpi: int = 100) -> Path:
    """Writes one PNG with the collapse signals per epoch: the skip connections of the derived cell
    (``skip_connects``) and the dominant eigenvalue of the validation-loss Hessian w.r.t. the
    architecture (``hessian_eigenvalue``; epochs without one are left out). Atomic, like the heatmaps."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("save_collapse_plot needs matplotlib: pip install matplotlib") from e
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(7, 3.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_skip, ax_eig = fig.subplots(1, 2)
    ax_skip.plot(epochs, [r.get("skip_connects", 0) for r in history], marker="o")
    ax_skip.set_xlabel("epoch")
    ax_skip.set_ylabel("skip connections in the derived cell")
    eig = [(e, r["hessian_eigenvalue"]) for e, r in zip(epochs, history) if r.get("hessian_eigenvalue") is not None]
    if eig:
        ax_eig.plot([e for e, _ in eig], [v for _, v in eig], marker="o", color="tab:red")
    ax_eig.set_xlabel("epoch")
    ax_eig.set_ylabel("dominant Hessian eigenvalue (arch)")
    if title:
        fig.suptitle(title)
    return _save_png_atomically(fig, path, dpi)
