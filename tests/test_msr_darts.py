"""MSR-DARTS (method "msr-darts") in the search loop: weights only (no architecture step), the result is
the minimum-stable-rank derivation of the trained supernet, logged per epoch; resume and the CLI."""
import json

import pytest
import torch
from torch.nn.utils import parametrize

import fastnas
from fastnas.cli import main
from fastnas.search import SearchConfig, Searcher
from fastnas.search.stable_rank import derive_by_stable_rank
from fastnas.spaces import parse_arch, parse_genotype
from helpers import search_killed_then_resumed

TINY = dict(method="msr-darts", dataset="synthetic", dataset_options={"n": 64, "image_size": 16}, batch_size=8,
            init_channels=8, epochs=2, warmup_epochs=0, device="cpu", quiet=True, hessian_iters=0)


def _name(model, module):
    return next(n for n, m in model.named_modules() if m is module)


def test_defaults_are_the_authors():
    """train_search_cifar.py of the MSR-DARTS code: DARTS's supernet (K=1, no edge normalisation), batch
    128, lr 0.025 annealed to 0.001, 80% of the training set for the weights; the operator is an op's last
    convolution (MixedOp.calc_stable_ranks)."""
    c = SearchConfig(method="msr-darts").resolved()
    assert (c.partial_channels, c.edge_norm, c.unrolled) == (1, False, False)
    assert (c.batch_size, c.learning_rate, c.learning_rate_min, c.train_portion, c.epochs) == (128, 0.025, 0.001, 0.8, 50)
    assert c.msr_operator == "last_conv" and c.msr_spectral_norm is True
    assert SearchConfig(method="pc-darts").resolved().train_portion == 0.5
    assert SearchConfig(method="msr-darts", train_portion=0.5, batch_size=64).resolved().batch_size == 64


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown msr_operator 'first'; choose one of last_conv, chain"):
        SearchConfig(method="msr-darts", msr_operator="first").resolved()
    with pytest.raises(ValueError, match="prune does not apply to msr-darts"):
        SearchConfig(method="msr-darts", prune="synflow").resolved()


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_supernet_holds_only_the_conv_ops_mixed_by_softmax_of_minus_stable_rank(tmp_path, space):
    """The authors' MixedOp: the four conv ops only (PRIMITIVES_SPECTRAL; NB201: nor_conv_1x1/3x3), mixed
    by softmax(-stable_rank) of the weights as they are at the start of each epoch."""
    s = Searcher(SearchConfig(space=space, layers=1 if space == "nb201" else 3, out_dir=str(tmp_path / "r"), **TINY))
    primitives = s.model.primitives
    convs = [m for m in s.model.modules() if isinstance(m, torch.nn.Conv2d) and "_ops" in _name(s.model, m)]
    assert convs and all(parametrize.is_parametrized(c) for c in convs)   # the authors' spectral norm
    plain = Searcher(SearchConfig(space=space, layers=1 if space == "nb201" else 3, out_dir=str(tmp_path / "p"),
                                  msr_spectral_norm=False, **TINY))
    assert not any(parametrize.is_parametrized(m) for m in plain.model.modules())
    for kind, mask in s.model.op_masks().items():
        assert mask.tolist() == [["conv" in p for p in primitives]] * mask.shape[0], kind
    _, initial = derive_by_stable_rank(s.model, image_size=16, operator="last_conv")
    for kind, a in s.model.masked_alphas().items():
        conv = torch.isfinite(initial[kind])
        assert torch.equal(torch.isfinite(a), conv), kind
        torch.testing.assert_close(a[conv].double(), -initial[kind][conv], rtol=1e-6, atol=0)
    weights = s.model.arch_weights()
    for kind, w in weights.items():   # stable ranks differ by tens: in effect one op per edge
        assert (w.max(-1).values > 0.5).all() and torch.allclose(w.sum(-1), torch.ones(w.shape[0])), kind
    result = s.run()
    for row in result.history:        # each epoch ends setting the next one's mixing from its stable ranks
        for kind, ranks in row["stable_rank"].items():
            r = torch.tensor([[float("inf") if v is None else v for v in e] for e in ranks], dtype=torch.float64)
            assert torch.equal(torch.tensor(row["arch_weights"][kind]).argmax(-1), r.argmin(-1)), kind
    _, final = derive_by_stable_rank(s.model, image_size=16, operator="last_conv")
    masked = s.model.masked_alphas()
    for kind, w in s.model.arch_weights().items():   # the mixing after the last epoch: exactly -stable rank
        conv = torch.isfinite(final[kind])
        assert torch.equal(masked[kind][conv], (-final[kind][conv]).to(masked[kind].dtype)), kind
        torch.testing.assert_close(torch.tensor(result.history[-1]["arch_weights"][kind], dtype=torch.float64),
                                   w.double(), atol=5e-7, rtol=0)   # logged rounded to 6 decimals


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_result_is_the_stable_rank_derivation_of_the_trained_weights(tmp_path, space):
    s = Searcher(SearchConfig(space=space, layers=1 if space == "nb201" else 3, out_dir=str(tmp_path / "r"), **TINY))
    weights = [p.detach().clone() for p in s.model.weight_parameters()]
    result = s.run()
    assert any(not torch.equal(a, b) for a, b in zip(s.model.weight_parameters(), weights))
    expected, scores = derive_by_stable_rank(s.model, image_size=16, operator="last_conv")
    assert result.genotype == expected
    if space == "nb201":
        parse_arch(result.arch)
        ops = [token.split("~")[0] for token in result.arch.split("|") if "~" in token]
        assert len(ops) == 6 and all(op.startswith("nor_conv") for op in ops), ops
    else:
        assert parse_genotype(repr(result.genotype)) == result.genotype
        assert all("conv" in op for op, _ in result.genotype.normal + result.genotype.reduce)
    logged = result.history[-1]["stable_rank"]
    for kind, t in scores.items():
        got = torch.tensor([[float("nan") if v is None else v for v in row] for row in logged[kind]], dtype=torch.float64)
        torch.testing.assert_close(got, t, atol=1e-4, rtol=0, equal_nan=True)


def test_resumes_identically(tmp_path, monkeypatch):
    kw = dict(TINY, space="nb201", layers=1, epochs=3)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    resumed = search_killed_then_resumed(monkeypatch, 2, tmp_path / "killed", **kw)
    assert resumed.arch == full.arch
    assert resumed.history[-1]["stable_rank"] == full.history[-1]["stable_rank"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["search", "--space", "darts", "--method", "msr-darts", "--dataset", "synthetic", "--dataset-option",
                 "n=64", "--dataset-option", "image_size=16", "--batch_size", "8", "--init_channels", "8", "--layers",
                 "3", "--epochs", "1", "--warmup_epochs", "0", "--device", "cpu", "--quiet", "--hessian_iters", "0",
                 "--msr_operator", "chain", "--train_portion", "0.6", "--no-msr-spectral-norm", "--out_dir", str(out)])
    assert code == 0
    genotype = parse_genotype(capsys.readouterr().out.strip().splitlines()[-1])
    assert repr(genotype) == (out / "genotype.txt").read_text().strip()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]["stable_rank"]) == {"normal", "reduce"}
    config = json.loads((out / "config.json").read_text())
    assert (config["msr_operator"], config["train_portion"], config["msr_spectral_norm"]) == ("chain", 0.6, False)


def test_non_square_images_and_bad_sizes(tmp_path):
    from fastnas.data import from_tensors
    from fastnas.nn import SearchNetwork
    from fastnas.search.stable_rank import check_image_size, edge_stable_ranks

    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=4, layers=1, partial_channels=1, edge_norm=False)
    assert check_image_size(net, (16, 24)) == (16, 24)
    scores = edge_stable_ranks(net, (16, 24))["cell"]
    assert torch.isfinite(scores[:, 2:4]).all()
    with pytest.raises(ValueError, match="18x18 is not divisible by 2\\*\\*2"):
        check_image_size(net, 18)
    g = torch.Generator().manual_seed(0)
    rect = from_tensors(torch.randint(0, 256, (64, 3, 16, 24), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (64,), generator=g))
    result = fastnas.search(**dict(TINY, dataset=rect, dataset_options={}, space="nb201", layers=1, epochs=1),
                            out_dir=str(tmp_path / "rect"))
    parse_arch(result.arch)
    # a size that does not halve exactly fails before any training, naming the size
    odd = from_tensors(torch.randint(0, 256, (64, 3, 18, 18), dtype=torch.uint8, generator=g),
                       torch.randint(0, 10, (64,), generator=g))
    with pytest.raises(ValueError, match="image size 18x18"):
        Searcher(SearchConfig(**dict(TINY, dataset=odd, dataset_options={}, space="nb201", layers=1),
                              out_dir=str(tmp_path / "odd")))
