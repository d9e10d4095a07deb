"""fastnas.search.plots: arch heatmap PNGs (written atomically, no pyplot) and edge label helpers."""
import sys

import numpy as np
import pytest
import torch

from fastnas.search.plots import edge_labels_darts, edge_labels_nb201, save_arch_heatmap
from fastnas.spaces import NB201_EDGES, NB201_PRIMITIVES, NUM_EDGES, PRIMITIVES, edge_node_source

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check_png(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0 and img.shape[2] in (3, 4)
    return img


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_edge_labels_darts():
    labels = edge_labels_darts()
    assert len(labels) == NUM_EDGES == 14
    assert labels[:5] == ["n2<-c_{k-2}", "n2<-c_{k-1}", "n3<-c_{k-2}", "n3<-c_{k-1}", "n3<-n2"]
    assert labels[-1] == "n5<-n4"
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    for e, label in enumerate(labels):  # agrees with the space's own edge layout
        node, src = edge_node_source(e)
        assert label == f"n{node + 2}<-{names.get(src, f'n{src}')}"
    assert len(edge_labels_darts(steps=2)) == 5
    with pytest.raises(ValueError):
        edge_labels_darts(0)


def test_edge_labels_nb201():
    labels = edge_labels_nb201()
    assert labels == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    assert len(labels) == len(NB201_EDGES) == 6


def test_darts_heatmap_png(tmp_path):
    rng = np.random.default_rng(0)
    mats = {"normal": _softmax(rng.normal(size=(14, 8))), "reduce": torch.softmax(torch.randn(14, 8), dim=-1)}
    out = save_arch_heatmap(tmp_path / "alphas.png", mats, edge_labels_darts(), list(PRIMITIVES), "epoch 3")
    assert out == tmp_path / "alphas.png"
    img = _check_png(out)
    assert img.shape[1] > img.shape[0]  # two panels side by side
    assert _leftovers(tmp_path) == []


def test_nb201_heatmap_dict_row_labels_and_overwrite(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "sub" / "nb201.png"  # parent folder is created
    labels = {"cell": edge_labels_nb201()}
    save_arch_heatmap(path, {"cell": _softmax(rng.normal(size=(6, 5)))}, labels, list(NB201_PRIMITIVES), "nb201")
    first = path.read_bytes()
    save_arch_heatmap(path, {"cell": _softmax(rng.normal(size=(6, 5)))}, labels, list(NB201_PRIMITIVES), "nb201")
    _check_png(path)
    assert path.read_bytes() != first  # replaced
    assert _leftovers(path.parent) == []


def test_constant_and_nan_matrix(tmp_path):
    m = np.full((6, 5), 0.2)
    m[0, 0] = np.nan
    _check_png(save_arch_heatmap(tmp_path / "c.png", {"c": m}, edge_labels_nb201(), list(NB201_PRIMITIVES), ""))


def test_bad_shapes_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        save_arch_heatmap(tmp_path / "x.png", {"a": np.zeros((5, 5))}, edge_labels_nb201(), list(NB201_PRIMITIVES), "")
    with pytest.raises(ValueError, match="column"):
        save_arch_heatmap(tmp_path / "x.png", {"a": np.zeros((6, 4))}, edge_labels_nb201(), list(NB201_PRIMITIVES), "")
    with pytest.raises(ValueError, match="2-D"):
        save_arch_heatmap(tmp_path / "x.png", {"a": np.zeros(6)}, edge_labels_nb201(), list(NB201_PRIMITIVES), "")
    with pytest.raises(ValueError, match="no entry"):
        save_arch_heatmap(tmp_path / "x.png", {"a": np.zeros((6, 5))}, {"b": edge_labels_nb201()},
                          list(NB201_PRIMITIVES), "")
    with pytest.raises(ValueError):
        save_arch_heatmap(tmp_path / "x.png", {}, [], [], "")
    assert list(tmp_path.iterdir()) == []


def test_failed_render_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "x.png"
    args = ({"a": np.zeros((6, 5))}, edge_labels_nb201(), list(NB201_PRIMITIVES), "")
    save_arch_heatmap(path, *args)
    before = path.read_bytes()

    def broken_savefig(self, f, **kwargs):  # writes half a file, then fails
        f.write(PNG_SIGNATURE)
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        save_arch_heatmap(path, *args)
    assert path.read_bytes() == before  # the old PNG is intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_backend_untouched_and_no_pyplot(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    save_arch_heatmap(tmp_path / "b.png", {"a": np.eye(6, 5)}, edge_labels_nb201(), list(NB201_PRIMITIVES), "t")
    assert matplotlib.get_backend() == backend
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules


def test_missing_matplotlib(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.colors", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        save_arch_heatmap(tmp_path / "x.png", {"a": np.zeros((6, 5))}, edge_labels_nb201(), list(NB201_PRIMITIVES), "")
    assert list(tmp_path.iterdir()) == []
