"""B-DARTS (method "b-darts"): the broad supernet in the search loop, on full channels with the confident
learning rate on by default (BNAS-v2-CLR); DARTS space only."""
import json

import pytest
import torch

import fastnas
from fastnas.cli import main
from fastnas.nn import BroadSearchNetwork
from fastnas.search import SearchConfig, Searcher
from fastnas.spaces import Genotype, parse_genotype
from helpers import search_killed_then_resumed

TINY = dict(space="darts", method="b-darts", dataset="synthetic", dataset_options={"n": 64, "image_size": 16},
            batch_size=8, init_channels=8, enhancement_cells=1, epochs=3, warmup_epochs=0, device="cpu",
            quiet=True, hessian_iters=2, hessian_batch=4)


def test_defaults_are_bnas_v2_clr():
    """BNASv2CLR/train_search_b_confidence.py: full channels, no edge normalisation, the confident learning
    rate with p = 2, batch 256, lr 0.1 annealed to 0, arch lr 3e-4 from the first epoch."""
    c = SearchConfig(method="b-darts").resolved()
    assert (c.partial_channels, c.edge_norm, c.unrolled, c.clr_power) == (1, False, False, 2.0)
    assert (c.batch_size, c.learning_rate, c.learning_rate_min, c.arch_learning_rate, c.warmup_epochs,
            c.epochs) == (256, 0.1, 0.0, 3e-4, 0, 50)
    assert (c.conv_blocks, c.enhancement_cells) == (2, 2)
    assert SearchConfig(method="b-darts", clr_power=1.0).resolved().clr_power == 1.0


@pytest.mark.parametrize("settings, message", [
    (dict(space="nb201"), "searches the 'darts' space only, not 'nb201': the broad supernet"),
    (dict(layers=8), "layers does not apply to b-darts"),
    (dict(conv_blocks=0), "conv_blocks must be a positive integer"),
    (dict(enhancement_cells=-1), "enhancement_cells must be an integer >= 0"),
])
def test_bad_settings_name_the_problem(settings, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(method="b-darts", **settings).resolved()


def test_the_searcher_builds_the_broad_supernet(tmp_path):
    s = Searcher(SearchConfig(**dict(TINY, conv_blocks=2, enhancement_cells=1), out_dir=str(tmp_path / "r")))
    assert isinstance(s.model, BroadSearchNetwork)
    assert sum(c.reduction for c in s.model.cells) == 2 and sum(not c.reduction for c in s.model.cells) == 1
    assert all(op.k == 1 for c in s.model.cells for op in c._ops)
    pc = Searcher(SearchConfig(**dict(TINY, conv_blocks=2, enhancement_cells=1, partial_channels=4, edge_norm=True),
                               out_dir=str(tmp_path / "pc")))   # BNAS-v2-PC's supernet
    assert all(op.k == 4 for c in pc.model.cells for op in c._ops)


def test_search_runs_with_the_confident_learning_rate_and_resumes_identically(tmp_path, monkeypatch):
    full = fastnas.search(**TINY, out_dir=str(tmp_path / "full"))
    assert isinstance(full.genotype, Genotype) and parse_genotype(repr(full.genotype)) == full.genotype
    assert [h["confidence"] for h in full.history] == pytest.approx([(e / 3) ** 2 for e in (1, 2, 3)])
    assert all(h["hessian_eigenvalue"] is not None for h in full.history)
    resumed = search_killed_then_resumed(monkeypatch, 2, tmp_path / "killed", **TINY)
    for name, p in full.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], p), name
    assert resumed.genotype == full.genotype
    # BNAS-v2's train_b.py reads the convolution-block cell from `normal`, the enhancement cell from `reduce`
    g, bnas = full.genotype, full.extras["bnas_genotype"]
    assert (bnas.normal, bnas.reduce, bnas.normal_concat, bnas.reduce_concat) == \
        (g.reduce, g.normal, g.reduce_concat, g.normal_concat)
    assert json.loads((tmp_path / "full" / "result.json").read_text())["bnas_genotype"] == repr(bnas)
    assert f"for BNAS-v2's train_b.py (normal/reduce swapped): {bnas!r}" in str(full)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["search", "--method", "b-darts", "--dataset", "synthetic", "--dataset-option", "n=64",
                 "--dataset-option", "image_size=16", "--batch_size", "8", "--init_channels", "8",
                 "--conv_blocks", "1", "--enhancement_cells", "1", "--epochs", "1", "--warmup_epochs", "0",
                 "--device", "cpu", "--quiet", "--hessian_iters", "0", "--out_dir", str(out)])
    assert code == 0
    assert parse_genotype(capsys.readouterr().out.strip().splitlines()[-1])
    config = json.loads((out / "config.json").read_text())
    assert (config["conv_blocks"], config["enhancement_cells"], config["clr_power"]) == (1, 1, 2.0)
    assert main(["search", "--method", "b-darts", "--space", "nb201", "--quiet"]) == 2
    assert "searches the 'darts' space only" in capsys.readouterr().err


def test_image_size_must_halve_at_every_conv_block(tmp_path):
    with pytest.raises(ValueError, match="image size 18x18 is not divisible by 2\\*\\*conv_blocks = 4"):
        Searcher(SearchConfig(**dict(TINY, dataset_options={"n": 64, "image_size": 18}), out_dir=str(tmp_path / "r")))
