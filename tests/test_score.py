"""fastnas.score, the score table, the evaluation against a benchmark table and ``fastnas score``."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import fastnas
from fastnas.cli import main
from fastnas.proxies import ScoreTable, correlations, draws_of, get_proxy, images_needed, load_proxy_data, score
from fastnas.proxies.score import build_network, draw_seed, score_one
from fastnas.proxies.registry import PROXIES, register_proxy
from fastnas.spaces import parse_genotype

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
DARTS = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
         "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
         "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
         "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
         "('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")


def _weight_sum(model, images, labels=None, *, scale=1.0):
    """Sum of the first conv weight's absolute values times the output mean: depends on init and data."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        return scale * (float(conv.weight.abs().sum()) + float(model(images).mean()))


def _n_params(model, images, labels=None):
    return float(sum(p.numel() for p in model.parameters()))


def _nan(model, images, labels=None):
    return float("nan")


def _label_sum(model, images, labels):
    return float(labels.sum())


for name, fn, uses_labels in (("test_weight_sum", _weight_sum, False), ("test_n_params", _n_params, False),
                              ("test_nan", _nan, False), ("test_label_sum", _label_sum, True)):
    if name not in PROXIES:
        register_proxy(name, higher_is_better=True, uses_labels=uses_labels, batch_size=4)(fn)
if "test_averaged" not in PROXIES:  # the weight sum, averaged over 2 draws by default
    register_proxy("test_averaged", higher_is_better=True, uses_labels=False, batch_size=4, repeats=2)(
        lambda model, images, labels=None: _weight_sum(model, images))


def test_table_rows_follow_the_archs_and_every_input_form_scores():
    archs = [BEST, ALL_SKIP, tuple(["nor_conv_1x1"] * 6), parse_genotype(DARTS), DARTS]
    t = score(archs, ["test_n_params", "test_weight_sum"], device="cpu", seed=1)
    assert isinstance(t, ScoreTable) and len(t) == 5 and t.proxies == ["test_n_params", "test_weight_sum"]
    assert t.archs[0] == BEST and t.archs[3] == DARTS and t.archs[4] == DARTS
    assert t["test_n_params"][3] == t["test_n_params"][4]  # a Genotype and its repr are the same network
    assert t["test_n_params"][0] > t["test_n_params"][1]   # convs have parameters, skips none
    assert all(np.isfinite(t["test_weight_sum"]))


def test_one_arch_and_op_names_are_one_row():
    assert len(score(BEST, "test_n_params", device="cpu")) == 1
    assert len(score(["nor_conv_3x3"] * 6, "test_n_params", device="cpu")) == 1


def test_scores_are_deterministic_and_independent_of_the_other_archs():
    a = score([BEST, ALL_SKIP], ["test_weight_sum"], device="cpu", seed=5)
    b = score([ALL_SKIP, BEST], ["test_weight_sum"], device="cpu", seed=5)
    c = score([BEST], ["test_weight_sum"], device="cpu", seed=5)
    assert a["test_weight_sum"][0] == b["test_weight_sum"][1] == c["test_weight_sum"][0]
    d = score([BEST], ["test_weight_sum"], device="cpu", seed=6)
    assert d["test_weight_sum"][0] != c["test_weight_sum"][0]  # the seed reaches the initialisation


def test_synthetic_scores_do_not_depend_on_the_other_proxies_of_the_call():
    """The synthetic pool is drawn in seeded chunks: a proxy that reads 640 images (past the first
    chunk of 512) in the same call leaves the first images, and so the other scores, as they were."""
    alone = score(BEST, "nwot", device="cpu", batch_size=16)
    with_more = score(BEST, ["nwot", "test_weight_sum"], device="cpu", batch_size=16,
                      settings={"test_weight_sum": {"repeats": 40}})
    assert alone["nwot"][0] == with_more["nwot"][0]
    small, big = load_proxy_data("synthetic", n=300, seed=2), load_proxy_data("synthetic", n=1500, seed=2)
    assert torch.equal(big.images[:300], small.images) and torch.equal(big.labels[:300], small.labels)
    assert len(torch.unique(big.images.flatten(1), dim=0)) == 1500        # the chunks are new samples
    assert torch.bincount(big.labels[512:1024], minlength=10).min() >= 51  # balanced in every chunk


def test_scoring_leaves_the_callers_random_state_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    score(BEST, "nwot", device="cpu", batch_size=8, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_a_module_is_scored_on_a_copy():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    before = [p.clone() for p in net.parameters()]
    t = score(net, ["test_n_params"], device="cpu")
    assert t["test_n_params"][0] == sum(p.numel() for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_settings_reach_the_proxy_and_bad_settings_are_named():
    base = score(BEST, "test_weight_sum", device="cpu")["test_weight_sum"][0]
    doubled = score(BEST, "test_weight_sum", device="cpu", settings={"test_weight_sum": {"scale": 2.0}})
    assert math.isclose(doubled["test_weight_sum"][0], 2 * base, rel_tol=1e-12)
    with pytest.raises(TypeError, match="no setting"):
        score(BEST, "test_weight_sum", device="cpu", settings={"test_weight_sum": {"scael": 2.0}})
    with pytest.raises(ValueError, match="not scored"):
        score(BEST, "test_weight_sum", device="cpu", settings={"test_n_params": {}})
    with pytest.raises(ValueError, match="did you mean"):
        score(BEST, "test_weight_sun", device="cpu")
    with pytest.raises(ValueError, match="no architectures"):
        score([], "test_weight_sum")
    with pytest.raises(TypeError, match="cannot score"):
        score([42], "test_weight_sum", device="cpu")


def _draw_by_hand(arch, data, seed, r, n=4):
    torch.manual_seed(draw_seed(seed, r))
    return _weight_sum(build_network(arch).float().train(), data.images[r * n:(r + 1) * n])


def test_repeats_average_draws_of_fresh_initialisations_on_their_own_batches():
    data = load_proxy_data("synthetic", n=12, seed=3)
    draws = [_draw_by_hand(BEST, data, 5, r) for r in range(3)]
    assert len(set(draws)) == 3                       # each draw is another network on other images
    assert draw_seed(5, 0) == 5 and len({draw_seed(5, r) for r in range(3)} | {6, 7}) == 5
    one = score_one(BEST, "test_weight_sum", data, seed=5)
    assert one == draws[0]                            # one draw is the plain score
    three = score_one(BEST, "test_weight_sum", data, seed=5, settings={"repeats": 3})
    assert math.isclose(three, sum(draws) / 3, rel_tol=1e-12)
    # score() draws the images the repeats need; the first 4 are the single-draw batch
    t = score(BEST, "test_weight_sum", data="synthetic", device="cpu", seed=5, settings={"test_weight_sum": {"repeats": 3}})
    full = load_proxy_data("synthetic", n=12, seed=5)
    assert math.isclose(t["test_weight_sum"][0], sum(_draw_by_hand(BEST, full, 5, r) for r in range(3)) / 3,
                        rel_tol=1e-12)


def test_a_proxys_registered_repeats_is_its_default():
    data = load_proxy_data("synthetic", n=8, seed=0)
    proxy = get_proxy("test_averaged")
    assert draws_of(proxy) == 2 and images_needed(proxy) == 8 and images_needed(proxy, 3, {"repeats": 5}) == 15
    by_hand = (_draw_by_hand(BEST, data, 0, 0) + _draw_by_hand(BEST, data, 0, 1)) / 2
    assert math.isclose(score_one(BEST, proxy, data), by_hand, rel_tol=1e-12)
    assert score_one(BEST, proxy, data, settings={"repeats": 1}) == _draw_by_hand(BEST, data, 0, 0)
    assert draws_of(get_proxy("grasp")) == 1          # the papers' protocol: one batch


def test_swap_repeats_stay_inside_one_call():
    swap = get_proxy("swap")
    assert draws_of(swap, {"repeats": 8}) == 1 and images_needed(swap, None, {"repeats": 8}) == swap.batch_size


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_repeats_are_refused(bad):
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        score(BEST, "test_weight_sum", device="cpu", settings={"test_weight_sum": {"repeats": bad}})


def test_repeats_need_enough_images():
    data = load_proxy_data("synthetic", n=8, seed=0)
    with pytest.raises(ValueError, match="averages 3 draws of 4 images: it needs 12 images, the data holds 8"):
        score_one(BEST, "test_weight_sum", data, settings={"repeats": 3})
    with pytest.raises(ValueError, match="batch 2 of 4 images"):
        data.batch(4, 2)


def test_a_non_finite_score_is_an_error_not_a_silent_row():
    with pytest.raises(RuntimeError, match="finite"):
        score(BEST, "test_nan", device="cpu")


def test_labelled_proxies_need_labels():
    data = load_proxy_data((torch.randint(0, 255, (8, 3, 8, 8), dtype=torch.uint8), torch.arange(8)), n=8)
    assert score(BEST, "test_label_sum", data=data, device="cpu")["test_label_sum"][0] == int(data.labels[:4].sum())
    unlabelled = load_proxy_data(torch.randint(0, 255, (8, 3, 8, 8), dtype=torch.uint8), n=8)
    with pytest.raises(ValueError, match="needs labels"):
        score(BEST, "test_label_sum", data=unlabelled, device="cpu")


def test_proxy_data_draw_is_seeded_and_normalised():
    a = load_proxy_data("synthetic", n=64, seed=0)
    b = load_proxy_data("synthetic", n=64, seed=0)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.float32
    assert abs(float(a.images.mean())) < 0.5 and a.num_classes == 10
    with pytest.raises(ValueError, match="holds 8 images"):
        load_proxy_data((torch.randint(0, 255, (8, 3, 4, 4), dtype=torch.uint8), torch.zeros(8, dtype=torch.long)),
                        n=16)


@pytest.mark.skipif(not (DATA / "cifar10_sample.npz").is_file(), reason="shared/data/cifar10_sample.npz absent")
def test_cifar10_sample_path_is_recognised():
    d = load_proxy_data(DATA, n=16)
    assert d.images.shape == (16, 3, 32, 32) and d.labels.shape == (16,) and d.name.startswith("cifar10_sample")
    assert torch.equal(load_proxy_data(DATA / "cifar10_sample.npz", n=16).images, d.images)


def test_csv_round_trip(tmp_path):
    t = score([BEST, ALL_SKIP], ["test_n_params", "test_weight_sum"], device="cpu")
    rows = list(csv.DictReader(open(t.to_csv(tmp_path / "s.csv"))))
    assert [r["arch"] for r in rows] == [BEST, ALL_SKIP]
    assert [float(r["test_weight_sum"]) for r in rows] == list(t["test_weight_sum"])


def test_correlations_are_signed_and_skip_missing_truth():
    t = ScoreTable(["a", "b", "c", "d"], {"p": np.array([1.0, 2.0, 3.0, 4.0])}, {"p": 1.0}, {"p": True})
    rows = correlations(t, {"up": [10, 20, 30, np.nan], "down": [4, 3, 2, 1]})
    by = {r["column"]: r for r in rows}
    assert by["up"]["spearman"] == pytest.approx(1.0) and by["up"]["n"] == 3
    assert by["down"]["spearman"] == pytest.approx(-1.0) and by["down"]["kendall"] == pytest.approx(-1.0)


def test_fastnas_score_is_the_proxies_score():
    t = fastnas.score(BEST, ["test_n_params"], device="cpu")
    assert t["test_n_params"][0] == score(BEST, ["test_n_params"], device="cpu")["test_n_params"][0]


def _mini_table(tmp_path):
    archs = [BEST, ALL_SKIP, "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|"
             "nor_conv_1x1~2|", "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|"
             "avg_pool_3x3~2|"]
    path = tmp_path / "table.csv"
    with open(path, "w") as f:
        f.write("arch,cifar10_test\n" + "".join(f"{a},{acc}\n" for a, acc in zip(archs, [94.0, 60.0, 88.0, 70.0])))
    return path, archs


def test_cli_score_writes_csv(tmp_path, capsys):
    assert main(["score", "--arch", BEST, "--arch", ALL_SKIP, "--proxies", "test_n_params", "--device", "cpu",
                 "--quiet"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["arch"] for r in rows] == [BEST, ALL_SKIP] and float(rows[0]["test_n_params"]) > 0
    archs_file = tmp_path / "archs.txt"
    archs_file.write_text(f"# two archs\n{BEST}\n{ALL_NONE}\n")
    out = tmp_path / "scores.csv"
    assert main(["score", "--archs-file", str(archs_file), "--proxies", "test_n_params", "--device", "cpu",
                 "--quiet", "--output", str(out), "--set", "test_n_params.x=1"]) == 2  # no such setting
    assert main(["score", "--archs-file", str(archs_file), "--proxies", "test_n_params", "--device", "cpu",
                 "--quiet", "--output", str(out)]) == 0
    assert [r["arch"] for r in csv.DictReader(open(out))] == [BEST, ALL_NONE]


def test_cli_score_evaluates_on_a_table(tmp_path, capsys):
    path, archs = _mini_table(tmp_path)
    assert main(["score", "--table", str(path), "--archs", "4", "--proxies", "test_n_params", "--device", "cpu",
                 "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "4 archs" in report and "cifar10_test" in report and "test_n_params" in report
    # Parameters rank the table as its accuracy does, except that the skip and the pool cells tie (no
    # cell parameters): Spearman = 4.5 / sqrt(4.5 * 5) = 0.949, Kendall tau-b = 5 / sqrt(5 * 6) = 0.913.
    line = next(l for l in report.splitlines() if l.startswith("test_n_params"))
    assert "+0.949" in line and "+0.913" in line


def test_cli_score_compares_with_published_values_on_the_same_archs(tmp_path, capsys):
    path, archs = _mini_table(tmp_path)
    published = tmp_path / "zc.csv"
    # Covers 3 of the 4 table archs (plus one arch the table lacks), in another order. On those 3 the
    # accuracies (94, 60, 88) rank 3, 1, 2; parameters rank them the same way; the published values
    # rank them 1, 2, 3: Spearman 1 - 6 * 6 / (3 * 8) = -0.5 with the accuracy and with fastnas's scores.
    other = "|avg_pool_3x3~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    published.write_text(f"arch,val_acc,test_n_params\n{archs[2]},1,3\n{other},5,9\n{archs[0]},2,1\n"
                         f"{archs[1]},3,2\n")
    assert main(["score", "--table", str(path), "--archs", "4", "--proxies", "test_n_params", "--device", "cpu",
                 "--quiet", "--published", str(published)]) == 0
    report = capsys.readouterr().out
    assert "3 of the 4 scored archs covered" in report
    line = next(l for l in report.splitlines() if l.startswith("test_n_params") and "cifar10_test" in l)
    assert line.split()[2:] == ["3", "+1.000", "-0.500", "+1.500", "-0.500"]


def test_evaluate_draws_among_the_given_archs_only(tmp_path):
    from fastnas.proxies.evaluate import evaluate

    path, archs = _mini_table(tmp_path)
    table, rows, _ = evaluate(path, n_archs=None, proxies=["test_n_params"], device="cpu", among=archs[1:4])
    assert table.archs == archs[1:4] and rows[0]["n"] == 3
    table, _, _ = evaluate(path, n_archs=3, proxies=["test_n_params"], device="cpu",
                           among=[archs[3], ALL_NONE, archs[0], archs[2]])
    assert table.archs == [archs[0], archs[2], archs[3]]     # the table's order, ALL_NONE not in it
    with pytest.raises(ValueError, match="none of its archs is among the 1 given"):
        evaluate(path, proxies=["test_n_params"], device="cpu", among=[ALL_NONE])


def test_truth_of_aligns_the_columns_with_the_archs(tmp_path):
    from fastnas.proxies.evaluate import truth_of

    path, archs = _mini_table(tmp_path)
    assert truth_of(path, [archs[2], archs[0]])["cifar10_test"].tolist() == [88.0, 94.0]
    with pytest.raises(ValueError, match="1 of the archs are not in the table"):
        truth_of(path, [archs[0], ALL_NONE])


def test_load_published_rejects_a_file_without_the_proxies(tmp_path):
    from fastnas.proxies.evaluate import load_published

    path, archs = _mini_table(tmp_path)
    published = tmp_path / "zc.csv"
    published.write_text(f"arch,synflow,val_acc\n{archs[0]},1,90\n")
    with pytest.raises(ValueError, match="none of the proxies to compare"):
        load_published(published, ["test_n_params"])
    with pytest.raises(ValueError, match="not available for space 'darts'"):
        load_published(published, ["synflow"], space="darts")
    assert list(load_published(published, ["synflow", "nwot"])[1]) == ["synflow"]


def test_cli_score_errors_exit_2(tmp_path, capsys):
    assert main(["score", "--proxies", "test_n_params"]) == 2
    assert "nothing to score" in capsys.readouterr().err
    assert main(["score", "--table", str(tmp_path / "missing.csv")]) == 2
    path, _ = _mini_table(tmp_path)
    assert main(["score", "--table", str(path), "--archs", "99", "--proxies", "test_n_params"]) == 2
    assert "holds 4" in capsys.readouterr().err
    assert main(["score", "--arch", BEST, "--proxies", "test_n_params", "--published", str(path)]) == 2
    assert "--published needs --table" in capsys.readouterr().err
    assert main(["score", "--table", str(path), "--proxies", "test_n_params", "--published",
                 str(tmp_path / "none.csv")]) == 2
    assert "none.csv not found" in capsys.readouterr().err
    assert main(["score", "--table", str(path), "--proxies", "test_n_params", "--published", str(path)]) == 2
    assert "none of the proxies to compare (test_n_params)" in capsys.readouterr().err
    assert main(["score", "--space", "darts", "--table", str(path), "--published", str(path)]) == 2
    assert "not available for --space darts" in capsys.readouterr().err


def test_registry_lists_the_issue_proxies():
    names = {"swap", "reg_swap", "nwot", "epsinas", "synflow", "snip", "grasp", "fisher", "jacov", "grad_norm",
             "zen", "params", "flops"}
    for n in names:
        p = get_proxy(n)
        assert p.paper and isinstance(p.higher_is_better, bool) and p.batch_size >= 1
