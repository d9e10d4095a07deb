"""MAE-based unsupervised search (method "mae") in the search loop: no label is read, a dataset
without labels works, the base method's settings apply, and a killed run resumes identically."""
import json

import pytest
import torch

import fastnas
from fastnas.cli import main
from fastnas.data import from_tensors
from fastnas.nn.mae import MAESearchModel
from fastnas.search import SearchConfig, Searcher
from fastnas.spaces import parse_arch, parse_genotype
from helpers import search_killed_then_resumed

TINY = dict(method="mae", dataset="synthetic", dataset_options={"n": 64, "image_size": 16}, batch_size=8,
            init_channels=8, epochs=3, warmup_epochs=0, device="cpu", quiet=True, hessian_iters=2, hessian_batch=4)


def _unlabelled(n=64, size=16):
    g = torch.Generator().manual_seed(0)
    return from_tensors(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), None)


def test_base_methods_set_the_defaults():
    c = SearchConfig(method="mae").resolved()
    assert (c.partial_channels, c.edge_norm, c.unrolled) == (4, True, False)
    c = SearchConfig(method="mae", mae_base="darts").resolved()
    assert (c.partial_channels, c.edge_norm, c.unrolled) == (1, False, False)
    assert SearchConfig(method="mae", mae_base="darts-2nd").resolved().unrolled is True


@pytest.mark.parametrize("settings, message", [
    (dict(mae_base="drnas"), "mae_base must be one of"),
    (dict(mae_mask_ratio=1.0), "mae_mask_ratio must lie in"),
    (dict(mae_patch_size=0), "mae_patch_size must be a positive integer"),
])
def test_bad_settings_name_the_problem(settings, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(method="mae", **settings).resolved()


def test_labels_never_reach_the_loaders(tmp_path):
    s = Searcher(SearchConfig(space="nb201", layers=1, out_dir=str(tmp_path / "r"), **TINY))
    assert isinstance(s.model, MAESearchModel)
    assert s.w_loader.labels is None and s.a_loader.labels is None and s.eval_loader.labels is None


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_a_dataset_without_labels_searches(tmp_path, space):
    kw = dict(TINY, dataset=_unlabelled(), dataset_options={}, layers=1 if space == "nb201" else 3, epochs=2)
    searcher = Searcher(SearchConfig(space=space, **kw, out_dir=str(tmp_path / "run")))
    initial = {n: p.detach().clone() for n, p in searcher.model.named_arch_parameters()}
    result = searcher.run()
    if space == "nb201":
        parse_arch(result.arch)
    else:
        assert parse_genotype(repr(result.genotype)) == result.genotype
    assert all(h["train_acc"] is None and h["valid_acc"] is None for h in result.history)
    assert all(h["valid_loss"] > 0 and h["hessian_eigenvalue"] is not None for h in result.history)
    for name, p in result.arch_parameters.items():  # the reconstruction loss trained the architecture
        assert not torch.equal(p, initial[name]), name
    # a classification method says why it cannot use that dataset
    with pytest.raises(ValueError, match="has no labels.*method 'mae' searches without labels"):
        fastnas.search(space=space, **dict(kw, method="darts"), out_dir=str(tmp_path / "darts"))


def test_second_order_base_runs_without_labels(tmp_path):
    kw = dict(TINY, dataset=_unlabelled(), dataset_options={}, layers=1, epochs=1, mae_base="darts-2nd")
    result = fastnas.search(space="nb201", **kw, out_dir=str(tmp_path / "run"))
    parse_arch(result.arch)


def test_resumes_identically(tmp_path, monkeypatch):
    kw = dict(TINY, space="nb201", layers=1)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    resumed = search_killed_then_resumed(monkeypatch, 2, tmp_path / "killed", **kw)
    for name, p in full.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], p), name
    assert resumed.arch == full.arch


def test_validation_loss_is_deterministic_per_epoch(tmp_path):
    s = Searcher(SearchConfig(space="nb201", layers=1, out_dir=str(tmp_path / "r"), **TINY))
    assert s._evaluate()["valid_loss"] == s._evaluate()["valid_loss"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["search", "--space", "nb201", "--method", "mae", "--mae_base", "darts", "--mae_mask_ratio", "0.25",
                 "--dataset", "synthetic", "--dataset-option", "n=64", "--dataset-option", "image_size=16",
                 "--batch_size", "8", "--init_channels", "8", "--layers", "1", "--epochs", "1", "--warmup_epochs", "0",
                 "--device", "cpu", "--quiet", "--hessian_iters", "0", "--out_dir", str(out)])
    assert code == 0
    parse_arch(capsys.readouterr().out.strip().splitlines()[-1])
    config = json.loads((out / "config.json").read_text())
    assert (config["mae_base"], config["mae_mask_ratio"], config["partial_channels"]) == ("darts", 0.25, 1)
