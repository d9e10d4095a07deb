"""Bad input to ``fastnas.score`` / ``fastnas score`` is a clear error naming the problem, before any work."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from fastnas.cli import main
from fastnas.proxies import score
from fastnas.proxies.evaluate import evaluate
from fastnas.devices import resolve_device

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
GENOTYPE = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
            "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])")


def _images(n=8, c=3, h=32, w=32):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), torch.arange(n) % 10


@pytest.mark.parametrize("batch_size, error, named", [
    (0, ValueError, "batch_size must be >= 1, got 0"),
    (-4, ValueError, "batch_size must be >= 1, got -4"),
    (True, TypeError, "batch_size must be an integer, got bool"),
    (2.5, TypeError, "batch_size must be an integer, got float"),
])
def test_bad_batch_sizes_are_refused(batch_size, error, named):
    with pytest.raises(error, match=named):
        score(BEST, "params", device="cpu", batch_size=batch_size)


def test_a_huge_synthetic_batch_is_refused_before_allocating():
    with pytest.raises(ValueError, match="synthetic data: the proxies ask for 1000000 images"):
        score(BEST, "nwot", device="cpu", batch_size=10**6)


@pytest.mark.parametrize("seed, error, named", [
    (1.5, TypeError, "seed must be an integer, got float"),
    (None, TypeError, "seed must be an integer, got NoneType"),
    (-1, ValueError, r"seed must be in \[0, 2\*\*63\)|seed must be in \[0, 9223372036854775808\)"),
    (2**70, ValueError, "seed must be in"),
])
def test_bad_seeds_are_refused(seed, error, named):
    with pytest.raises(error, match=named):
        score(BEST, "params", device="cpu", seed=seed)


@pytest.mark.parametrize("kwargs, error, named", [
    (dict(proxies=[3]), TypeError, "proxy names must be strings, got int 3"),
    (dict(proxies=["params"], settings={"params": 3}), TypeError, r"settings\['params'\] must be a mapping"),
    (dict(proxies=["params"], settings=[("params", {})]), TypeError, "settings must be a mapping"),
    (dict(proxies=["params"], network_options={"nb201_channels": 0}), ValueError,
     r"network_options\['nb201_channels'\] must be >= 1, got 0"),
    (dict(proxies=["params"], network_options={"nb201_cells": -1}), ValueError, "nb201_cells"),
    (dict(proxies=["params"], network_options={"channels": 8}), TypeError, "unknown network option 'channels'"),
    (dict(proxies=["params"], network_options={"darts_stem": 0}), TypeError,
     r"network_options\['darts_stem'\] must be True or False, got int 0"),
])
def test_bad_proxies_settings_and_network_options_are_named(kwargs, error, named):
    with pytest.raises(error, match=named):
        score(BEST, device="cpu", **kwargs)


@pytest.mark.parametrize("device, error, named", [
    ("tpu", ValueError, "not a device"), ("cuda:x", ValueError, "not a device"), ("meta", ValueError, "not 'meta'"),
    (3.5, TypeError, "must be a string"),
])
def test_bad_devices_are_named(device, error, named):
    with pytest.raises(error, match=f"device .*{named}"):
        score(BEST, "params", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_named():
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        score(BEST, "params", device="cuda")
    assert resolve_device(None) == torch.device("cpu")


@pytest.mark.parametrize("shape, named", [
    ((8, 1, 32, 32), r"take RGB images \(B, 3, H, W\); the data is \(4, 1, 32, 32\)"),
    ((8, 3, 6, 6), "multiples of 4, the data is 6x6"),
    ((8, 3, 30, 32), "multiples of 4, the data is 30x32"),
])
def test_images_the_networks_cannot_take_are_named(shape, named):
    images, labels = _images(*shape)
    with pytest.raises(ValueError, match=named):
        score(BEST, "nwot", data=(images, labels), device="cpu", batch_size=4)


def test_a_module_of_ones_own_may_take_other_images():
    class Gray(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    images, labels = _images(8, 1, 6, 6)
    t = score(Gray(), "params", data=(images, labels), device="cpu", batch_size=4)
    assert t["params"][0] == pytest.approx(sum(p.numel() for p in Gray().parameters()) / 1e6)  # in millions


def _cli_err(capsys, *args):
    rc = main(["score", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_cli_bad_numbers_and_devices_exit_2(capsys):
    for args, named in ((["--batch-size", "0"], "batch_size must be >= 1"),
                        (["--batch-size", "-1"], "batch_size must be >= 1"),
                        (["--device", "tpu"], "device 'tpu'"),
                        (["--seed", "-1"], "seed must be in")):
        rc, err = _cli_err(capsys, "--arch", BEST, "--proxies", "params", "--quiet", *args)
        assert rc == 2 and named in err, (args, err)


def test_cli_folders_given_as_files_exit_2_and_leave_nothing(tmp_path, capsys):
    rc, err = _cli_err(capsys, "--archs-file", str(tmp_path), "--proxies", "params", "--device", "cpu")
    assert rc == 2 and "--archs-file" in err and "is a folder" in err
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, err = _cli_err(capsys, "--arch", BEST, "--proxies", "params", "--device", "cpu", "--output", str(out_dir))
    assert rc == 2 and "--output" in err and "is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]       # no stray out.journal.jsonl
    rc, err = _cli_err(capsys, "--arch", BEST, "--proxies", "params", "--device", "cpu", "--checkpoint", str(out_dir))
    assert rc == 2 and "--checkpoint" in err


def test_cli_never_writes_the_scores_over_an_input_file(tmp_path, capsys):
    archs = tmp_path / "archs.txt"
    archs.write_text(BEST + "\n")
    for flag in ("--output", "--checkpoint"):
        rc, err = _cli_err(capsys, "--archs-file", str(archs), "--proxies", "params", "--device", "cpu", flag, str(archs))
        assert rc == 2 and flag in err and "--archs-file" in err, err
        assert archs.read_text() == BEST + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archs.txt"]


def test_cli_space_is_checked_against_the_archs(capsys):
    rc, err = _cli_err(capsys, "--space", "darts", "--arch", BEST, "--proxies", "params", "--device", "cpu")
    assert rc == 2 and "--space darts: arch 1 is not a DARTS Genotype" in err
    rc, err = _cli_err(capsys, "--space", "nb201", "--arch", BEST, "--arch", GENOTYPE, "--proxies", "params",
                       "--device", "cpu")
    assert rc == 2 and "--space nb201: arch 2 is a DARTS Genotype" in err
    assert main(["score", "--arch", BEST, "--arch", GENOTYPE, "--proxies", "params", "--device", "cpu",
                 "--quiet"]) == 0                     # without --space, each arch is scored in its own space
    assert main(["score", "--space", "darts", "--arch", GENOTYPE, "--proxies", "params", "--device", "cpu",
                 "--quiet"]) == 0


def _table(tmp_path, archs):
    path = tmp_path / f"t{len(archs)}.csv"
    path.write_text("arch,cifar10_test\n" + "".join(f"{a},{90 - i}\n" for i, a in enumerate(archs)))
    return path


def test_an_evaluation_needs_three_archs(tmp_path, capsys):
    path = _table(tmp_path, [BEST, ALL_SKIP, "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"])
    with pytest.raises(ValueError, match="needs at least 3 archs; --archs is 2"):
        evaluate(path, "nb201", 2, "params", device="cpu")
    with pytest.raises(ValueError, match="needs at least 3 archs; the table holds 2"):
        evaluate(_table(tmp_path, [BEST, ALL_SKIP]), "nb201", None, "params", device="cpu")
    rc, err = _cli_err(capsys, "--table", str(path), "--archs", "3", "--sample-seed", "-1", "--proxies", "params",
                       "--device", "cpu", "--quiet")
    assert rc == 2 and "--sample-seed must be an integer >= 0, got -1" in err
    with pytest.raises(ValueError, match="--seed \\(which draws the archs without --sample-seed\\) must be"):
        evaluate(path, "nb201", 3, "params", device="cpu", seed=-1)
    with pytest.raises(ValueError, match="--archs must be >= 1"):
        evaluate(path, "nb201", 0, "params", device="cpu")
    scores, rows, _ = evaluate(path, "nb201", 3, "params", device="cpu")
    assert all(np.isfinite(r["spearman"]) for r in rows)


def test_a_constant_accuracy_column_reports_no_correlation_not_nan(tmp_path):
    from fastnas.proxies.evaluate import format_report

    path = tmp_path / "flat.csv"
    path.write_text("arch,cifar10_test\n" + "".join(f"{a},90\n" for a in (BEST, ALL_SKIP, NONE)))
    scores, rows, wall = evaluate(path, "nb201", None, "params", device="cpu")
    report = format_report(scores, rows, wall)
    assert "n/a" in report and "nan" not in report.lower()


def test_cli_a_binary_archs_file_exits_2(tmp_path, capsys):
    path = tmp_path / "archs.bin"
    path.write_bytes(bytes(range(256)))
    rc, err = _cli_err(capsys, "--archs-file", str(path), "--proxies", "params", "--device", "cpu")
    assert rc == 2 and "not a UTF-8 text file" in err
    path.write_bytes(b"\xef\xbb\xbf" + BEST.encode() + b"\n")     # a BOM is fine
    assert main(["score", "--archs-file", str(path), "--proxies", "params", "--device", "cpu", "--quiet"]) == 0


# -- everything a run would fail on later is checked before the first score ------------------------
def _counting(monkeypatch):
    """Counts score_one calls: a job refused up front must not have scored anything."""
    import importlib

    score_module = importlib.import_module("fastnas.proxies.score")  # the package's `score` is the function
    calls = []
    real = score_module.score_one
    monkeypatch.setattr(score_module, "score_one", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


@pytest.mark.parametrize("archs, named", [
    ([BEST, ALL_SKIP, BEST.replace("nor_conv_3x3~1|+", "nor_conv_3x4~1|+")], r"arch 3 of 3 \('\|nor_conv_3x3~0\|"),
    ([BEST, GENOTYPE.replace("sep_conv_3x3", "sep_conv_3x4", 1)], r"arch 2 of 2 \(.Genotype\(normal=\[\('sep_conv_3x4'.*unknown op 'sep_conv_3x4'"),
    ([BEST, "foo"], r"arch 2 of 2 \('foo'\)"),
])
def test_a_bad_arch_anywhere_is_named_before_any_scoring(monkeypatch, archs, named):
    calls = _counting(monkeypatch)
    with pytest.raises(ValueError, match=named):
        score(archs, "params,synflow", device="cpu")
    assert calls == []


@pytest.mark.parametrize("settings, named", [
    ({"nwot": {"bn_trian": False}}, r"proxy 'nwot' has no setting\(s\) \['bn_trian'\]"),
    ({"swap": {"gaussian_init": "false"}}, "setting 'gaussian_init' must be True or False, got str 'false'"),
    ({"swap": {"repeats": 2.5}}, "setting 'repeats' must be an integer, got float 2.5"),
    ({"reg_swap": {"mu": "big"}}, "setting 'mu' must be a number"),
    ({"epsinas": {"weights": 1}}, "setting 'weights' must be a list or tuple, got int 1"),
    ({"flops": {"count": 3}}, "setting 'count' must be a string"),
    ({"snip": {"bn_train": 0}}, "setting 'bn_train' must be True or False, got int 0"),
])
def test_bad_setting_names_and_types_are_named_before_any_scoring(monkeypatch, settings, named):
    calls = _counting(monkeypatch)
    proxies = ["params", *settings]
    with pytest.raises(TypeError, match=named):
        score([BEST, ALL_SKIP], proxies, settings=settings, device="cpu")
    assert calls == []


def test_a_number_for_a_float_setting_and_a_list_for_a_tuple_are_accepted():
    t = score(BEST, "reg_swap,epsinas", device="cpu", batch_size=4,
              settings={"reg_swap": {"mu": 1000, "repeats": 2}, "epsinas": {"weights": [1e-7, 1]}})
    assert np.isfinite(t["reg_swap"][0]) and np.isfinite(t["epsinas"][0])


def test_missing_labels_are_named_before_any_scoring(monkeypatch):
    calls = _counting(monkeypatch)
    images, _ = _images(8)
    with pytest.raises(ValueError, match="the data has no labels and 'snip' needs labels"):
        score(BEST, "nwot,snip", data=images, device="cpu", batch_size=4)
    assert calls == []


def test_a_proxy_listed_twice_is_refused():
    with pytest.raises(ValueError, match=r"proxies listed more than once: \['synflow'\]"):
        score(BEST, ["synflow", "params", "synflow"], device="cpu")


def test_epsinas_needs_three_images_and_finite_constants():
    with pytest.raises(ValueError, match="at least 3 images, got 2"):
        score(BEST, "epsinas", device="cpu", batch_size=2)
    with pytest.raises(ValueError, match="two positive finite constants"):
        score(BEST, "epsinas", device="cpu", batch_size=4, settings={"epsinas": {"weights": (float("inf"), 1.0)}})
    assert np.isfinite(score(BEST, "epsinas", device="cpu", batch_size=3)["epsinas"][0])


def test_a_setting_that_overflows_a_score_is_named_as_the_settings_doing():
    with pytest.raises(ValueError, match=r"returned inf .* with the settings \{'mixup_gamma': 1e\+30\}"):
        score(BEST, "zen", device="cpu", batch_size=4, settings={"zen": {"mixup_gamma": 1e30}})


def test_a_module_that_fails_on_the_images_is_named_with_their_shape():
    with pytest.raises(RuntimeError, match=r"proxy 'nwot' on the Linear given, images \(128, 3, 32, 32\): mat1"):
        score([nn.Linear(3, 10)], "nwot", device="cpu")

    class Flat(nn.Module):
        def forward(self, x):
            return torch.relu(x).flatten(1)[:, :10]

    with pytest.raises(ValueError, match="snip: Flat has no nn.Conv2d"):   # its class, not fastnas's wrapper
        score([Flat()], "snip", device="cpu")
    assert score([Flat()], "swap", device="cpu")["swap"][0] == 0.0   # no weights to re-initialise: one draw


def test_a_module_that_returns_no_logits_is_named():
    class Dicty(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return {"logits": self.fc(x.mean((2, 3)))}

    for proxy in ("snip", "synflow", "nwot"):
        with pytest.raises(TypeError, match="the scored Dicty returned a dict; a proxy needs logits"):
            score(Dicty(), proxy, device="cpu", batch_size=4)


def test_genotype_reprs_with_spaces_are_archs_not_op_names():
    t = score([" " + GENOTYPE, GENOTYPE + " "], "params", device="cpu")
    assert len(t) == 2 and t["params"][0] == t["params"][1]


# -- the CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [("false", False), ("FALSE", False), ("True", True), ("none", None),
                                             ("3", 3), ("2.5", 2.5), ("[1e-7, 1]", [1e-7, 1]), ("suite-zero", "suite-zero")])
def test_cli_setting_values_are_read_as_meant(value, expected):
    from fastnas.cli import _setting

    assert _setting(f"swap.x={value}") == ("swap", "x", expected)


def test_cli_bad_setting_and_overflow_exit_2_naming_them(capsys):
    for args, named in ((["--set", "swap.repeats=abc"], "setting 'repeats' must be an integer, got str 'abc'"),
                        (["--set", "nwot.bn_trian=False"], "has no setting(s) ['bn_trian']"),
                        (["--proxies", "epsinas", "--set", "epsinas.weights=[1e300,1]", "--batch-size", "4"],
                         "epsinas")):
        rc, err = _cli_err(capsys, "--arch", BEST, "--proxies", "swap,nwot", "--device", "cpu", "--quiet", *args)
        assert rc == 2 and named in err, (args, err)


def test_cli_options_that_would_be_ignored_or_misread_exit_2(tmp_path, capsys):
    for args, named in ((["--archs", "5"], "--archs samples archs from --table"),
                        (["--sample-seed", "3"], "--sample-seed samples archs from --table"),
                        (["--dataset", "synthetic", "--data", str(tmp_path)], "takes no --data"),
                        (["--dataset", "cifar10"], "--dataset cifar10 needs --data"),
                        (["--data", str(tmp_path / "nowhere")], "not found"),
                        (["--data", str(tmp_path)], "is a folder without a dataset fastnas reads"),
                        (["--output", str(tmp_path / "x.csv"), "--checkpoint", str(tmp_path / "x.csv")],
                         "--output and --checkpoint name the same file")):
        rc, err = _cli_err(capsys, "--arch", BEST, "--proxies", "params", "--device", "cpu", "--quiet", *args)
        assert rc == 2 and named in err, (args, err)
    assert list(tmp_path.iterdir()) == []


def test_cli_an_indented_comment_in_the_archs_file_is_a_comment(tmp_path, capsys):
    path = tmp_path / "archs.txt"
    path.write_text(f"# the best\n   # indented\n{BEST}\n")
    assert main(["score", "--archs-file", str(path), "--proxies", "params", "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().out.count("\n") == 2          # the header and one row


def test_scoring_without_data_warns_when_a_proxy_reads_images():
    """The papers score on real training images: synthetic ones are used when data is left out, and a
    proxy that reads images says so (params, flops and synflow read none)."""
    import warnings

    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    with pytest.warns(UserWarning, match="no data given: nwot will score on synthetic images"):
        score([arch], ["params", "nwot"], device="cpu", settings={"nwot": {}}, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score([arch], ["params", "flops"], device="cpu")
        score([arch], ["nwot"], data="synthetic", device="cpu", batch_size=8)


@pytest.mark.parametrize("proxies,noted", [("params,flops", False), ("params,nwot", True)])
def test_cli_notes_missing_data_only_when_a_proxy_reads_images(capsys, proxies, noted):
    assert main(["score", "--arch", BEST, "--proxies", proxies, "--device", "cpu", "--batch-size", "8"]) == 0
    assert ("no --data" in capsys.readouterr().err) == noted


def test_a_list_of_strings_is_op_names_only_when_it_is_six_nb201_ops():
    with pytest.raises(ValueError, match="arch 1 of 1 \\('hello'\\): an NB201 arch string has 3"):
        score(["hello"], "params", device="cpu")
    ops = ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3"]
    assert len(score(ops, "params", device="cpu")) == 1
