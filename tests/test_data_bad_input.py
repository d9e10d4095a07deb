"""Bad input to the data and table readers: a clear ValueError/TypeError naming the problem and the
file (and line), never NaN network inputs, a silently dropped column or a bare library exception."""
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

from fastnas.data import (DeviceLoader, ImageData, from_tensors, load_cifar, load_dataset, load_npz, make_synthetic,
                          read_cifar_batch)
from fastnas.data import datasets as ds_mod
from fastnas.proxies.evaluate import load_truth
from fastnas.spaces import Genotype
from fastnas.tables import NB201Table, load_nb201_table

A0 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
A1 = "|skip_connect~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|skip_connect~2|"
A2 = "|nor_conv_1x1~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def _labels(n=8):
    return torch.arange(n) % 4


def _varied(n=8, c=3, s=6):
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------
# Constant / non-finite images
# ---------------------------------------------------------------------------------------------------
def test_constant_channel_is_refused_not_divided_by_zero():
    x = _varied()
    x[:, 1] = 7
    with pytest.raises(ValueError, match=r"constant in channel 1 \(every pixel is 7\)") as e:
        load_dataset((x, _labels()))
    assert "'tensors'" in str(e.value) and "channel 0" not in str(e.value)
    # with std given explicitly nothing divides by the 0: accepted
    d = load_dataset((x, _labels()), std=(0.25, 0.25, 0.25))
    assert d.std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("labels,named", [
    (torch.arange(8) + 2**40, "labels go up to 1099511627783"),   # ids, not classes: no 2**40-way classifier
    (torch.arange(8) - 20, "labels are class indices and must be >= 0, got"),
])
def test_labels_that_are_not_class_indices_are_named(labels, named):
    x = torch.randint(0, 255, (8, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=named):
        from_tensors(x, labels)


class _Items(torch.utils.data.Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.item(i)


@pytest.mark.parametrize("item,error,named", [
    (lambda i: {"img": _varied()[i], "label": 1}, TypeError, r"item 0: expected an image .* got a dict"),
    (lambda i: (torch.rand(3, 8 + i, 8), 1), ValueError, r"item 1's image has shape \(3, 9, 8\)"),
    (lambda i: (_varied()[i], "cat"), TypeError, "item 0: the label must be an integer, got str 'cat'"),
    (lambda i: (_varied()[i], 1, 2), TypeError, "item 0: expected \\(image, label\\), got tuple of length 3"),
])
def test_torch_dataset_items_that_are_not_image_label_pairs_are_named(item, error, named):
    with pytest.raises(error, match=named):
        load_dataset(_Items(item))


@pytest.mark.parametrize("labels", [["a"] * 8, np.array([{}] * 8, dtype=object)])
def test_labels_that_are_not_integers_are_named(labels):
    with pytest.raises(TypeError, match="labels must be integers, got an array of"):
        from_tensors(_varied(), labels)


@pytest.mark.parametrize("options,error,named", [
    (dict(n=1e3), TypeError, "n must be an integer, got float"),
    (dict(n=True), TypeError, "n must be an integer, got bool"),
    (dict(n="abc"), TypeError, "n must be an integer, got str"),
    (dict(noise=-1.0), ValueError, "noise must be a finite number >= 0"),
])
def test_synthetic_options_are_checked(options, error, named):
    with pytest.raises(error, match=named):
        load_dataset("synthetic", **options)


def test_synthetic_data_too_large_to_make_says_so(monkeypatch):
    def no_memory(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
    monkeypatch.setattr(torch, "randn", no_memory)
    with pytest.raises(ValueError, match="could not allocate it: ask for fewer"):
        load_dataset("synthetic", n=64)


def test_zero_or_nonfinite_std_is_refused_everywhere():
    x = _varied()
    with pytest.raises(ValueError, match="channel 2 has mean .* and std 0.0"):
        load_dataset((x, _labels()), std=(0.2, 0.2, 0.0))
    with pytest.raises(ValueError, match="channel 0 has mean nan"):
        load_dataset((x, _labels()), mean=(float("nan"), 0.5, 0.5))
    with pytest.raises(ValueError, match="std 0.0"):
        ImageData(x, _labels(), 4, (0.5,) * 3, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="DeviceLoader: channel 1 has mean .* and std inf"):
        DeviceLoader(x, _labels(), 4, mean=(0.5,) * 3, std=(0.2, float("inf"), 0.2))
    x[:, 0] = 0
    with pytest.raises(ValueError, match="DeviceLoader: the images are constant in channel 0"):
        DeviceLoader(x, _labels(), 4)
    with pytest.raises(ValueError, match="constant in channel 0"):
        make_synthetic(n=8, num_classes=1, noise=0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_float_images_are_refused(bad):
    x = torch.rand(8, 3, 6, 6)
    x[0, 0, 0, :3] = bad
    with pytest.raises(ValueError, match=r"'tensors': 3 of 864 pixel values are not finite"):
        load_dataset((x, _labels()))


def test_nan_in_npz_names_the_file(tmp_path):
    p = tmp_path / "nan.npz"
    x = np.random.default_rng(0).random((4, 6, 6, 3), dtype=np.float32)
    x[1, 2, 3, 0] = np.nan
    np.savez(p, x=x, y=np.arange(4))
    with pytest.raises(ValueError, match="1 of 432 pixel values are not finite") as e:
        load_dataset(str(p))
    assert str(p) in str(e.value)


def test_empty_split_is_named_not_nan_stats(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, x=np.zeros((4, 6, 6, 3), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None],
             y=np.arange(4), split=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"s.npz \(split 'test'\): no pixels"):
        load_npz(p, split="test")


# ---------------------------------------------------------------------------------------------------
# Unreadable files
# ---------------------------------------------------------------------------------------------------
def _npy_named_npz(p):
    with open(p, "wb") as f:
        np.save(f, np.zeros((2, 3, 4, 4), np.uint8))


def _truncated_zip(p):
    q = p.with_name("full.npz")
    np.savez(q, x=np.zeros((20, 3, 8, 8), np.uint8))
    p.write_bytes(q.read_bytes()[:100])


@pytest.mark.parametrize("make,why", [
    (lambda p: p.write_text("hello"), "neither a zip archive"),
    (lambda p: p.write_bytes(b""), "EOFError"),
    (_npy_named_npz, "single array"),
    (_truncated_zip, "BadZipFile"),
    (lambda p: np.savez(p, x=np.array([object(), 1], dtype=object)), "cannot read array 'x'"),
    (lambda p: np.savez(p, images=np.zeros((2, 3, 4, 4), np.uint8)), r"no 'x' array \(keys: \['images'\]\)"),
])
def test_garbage_npz_names_the_file_and_its_expected_content(tmp_path, make, why):
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(ValueError, match=why) as e:
        load_dataset(str(p))
    msg = str(e.value)
    assert str(p) in msg and "'x': images (N, H, W, C)" in msg and "\n" not in msg


def test_garbage_cifar_batch_is_a_value_error_naming_the_file(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a CIFAR python pickle") as e:
        read_cifar_batch(p)
    assert str(p) in str(e.value)
    with open(p, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ValueError, match="holds a list, not a dict"):
        read_cifar_batch(p)
    with open(p, "wb") as f:
        pickle.dump({"data": zipfile.ZipInfo("x")}, f)          # a refused global: still an UnpicklingError
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(p)


def test_missing_cifar_messages_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_cifar("cifar10", tmp_path)
    assert "\n" not in str(e.value) and "download=True" in str(e.value)
    spec = ds_mod._CIFAR["cifar10"]
    url = (tmp_path / "gone.tar.gz").as_uri()
    monkeypatch.setitem(ds_mod._CIFAR, "cifar10", type(spec)(**{**spec.__dict__, "url": url, "md5": "0" * 32}))
    with pytest.raises(FileNotFoundError, match="download from .* failed") as e:
        load_cifar("cifar10", tmp_path / "root", download=True)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# NB201 tables
# ---------------------------------------------------------------------------------------------------
def _write(tmp_path, text, name="t.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_text(text, encoding=encoding)
    return p


@pytest.mark.parametrize("bad", ["N/A", "90%", "high"])
def test_one_bad_cell_is_an_error_not_a_dropped_column(tmp_path, bad):
    p = _write(tmp_path, f"arch,cifar10_test,cifar100_test\n{A0},91.5,70\n{A1},{bad},60\n{A2},80,50\n")
    with pytest.raises(ValueError, match=rf"line 3: column 'cifar10_test' holds '{bad}', which is not a number") as e:
        NB201Table.from_csv(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("bad", ["inf", "-inf", "Infinity", "1e999"])
def test_an_infinite_accuracy_is_an_error_naming_the_line(tmp_path, bad):
    p = _write(tmp_path, f"arch,cifar10_test\n{A0},91.5\n{A1},80\n{A2},{bad}\n")
    with pytest.raises(ValueError, match=rf"line 4: column 'cifar10_test' holds '{bad}', which is not a finite number"):
        NB201Table.from_csv(p)
    with pytest.raises(ValueError, match=rf"column 'acc' holds -?inf for arch '{re.escape(A1)}'; values must be "
                                         "finite"):
        NB201Table([A0, A1], {"acc": [1.0, float(bad)]})
    assert np.isnan(NB201Table([A0, A1], {"acc": [1.0, float("nan")]}).lookup(A1)["acc"])  # missing: allowed


@pytest.mark.parametrize("cell", ["1.5", "x", ""])
def test_a_bad_idx_cell_is_named_with_its_line(tmp_path, cell):
    p = _write(tmp_path, f"idx,arch,acc\n0,{A0},91.5\n1,{A1},80\n{cell},{A2},70\n")
    # 'x' among numbers is caught as any numeric column's bad cell; '1.5' and '' by the idx check
    with pytest.raises(ValueError, match=rf"line 4: (column )?'idx' holds '{cell}'(; the 'idx' column must hold "
                                         rf"an integer|, which is not a number)"):
        NB201Table.from_csv(p)


def test_text_and_empty_columns_are_still_ignored_and_empty_cells_are_nan(tmp_path):
    p = _write(tmp_path, f"arch,note,acc,blank\n{A0},good,91.5,\n{A1},,,\n{A2},bad,80,\n")
    t = NB201Table.from_csv(p)
    assert t.columns == ["acc"]
    assert np.isnan(t.lookup(A1)["acc"]) and t.lookup(A2)["acc"] == 80.0


def test_bom_is_accepted(tmp_path):
    p = _write(tmp_path, f"arch,acc\n{A0},91.5\n{A1},80\n", encoding="utf-8-sig")
    assert p.read_bytes().startswith(b"\xef\xbb\xbf")
    t = NB201Table.from_csv(p)
    assert t.columns == ["acc"] and len(t) == 2


def test_binary_csv_names_the_file(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\x00\xff\xfe garbage\n")
    with pytest.raises(ValueError, match="not a UTF-8 text CSV") as e:
        NB201Table.from_csv(p)
    assert str(p) in str(e.value)


def test_constructor_data_must_be_a_mapping():
    with pytest.raises(TypeError, match="mapping"):
        NB201Table([A0], [1.0])


def test_non_nats_folder_says_what_a_nats_folder_holds(tmp_path):
    pytest.importorskip("nats_bench", reason="nats_bench is not installed (pip install nats_bench)")
    (tmp_path / "t.csv").write_text("arch,acc\n")
    with pytest.raises(ValueError, match="not a NATS-Bench topology benchmark folder: it has no meta.pickle.pbz2"):
        load_nb201_table(tmp_path)


def test_garbage_pickle_pbz2_is_not_a_nats_bench_file(tmp_path):
    pytest.importorskip("nats_bench", reason="nats_bench is not installed (pip install nats_bench)")
    p = tmp_path / "g.pickle.pbz2"
    p.write_text("garbage")
    with pytest.raises(ValueError, match="is not a NATS-Bench topology benchmark file") as e:
        load_nb201_table(p)
    assert str(p) in str(e.value)


def test_cli_score_table_with_a_bad_cell_exits_2(tmp_path, capsys):
    from fastnas.cli import main
    p = _write(tmp_path, f"arch,acc\n{A0},91.5\n{A1},N/A\n{A2},80\n")
    assert main(["score", "--table", str(p), "--archs", "3", "--proxies", "params", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 3: column 'acc' holds 'N/A'" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# DARTS tables
# ---------------------------------------------------------------------------------------------------
_OPS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
        "skip_connect"]


def _geno(k):
    cell = [(_OPS[(k + e) % len(_OPS)], j) for i in range(4) for e, j in enumerate((0, i + 1))]
    return repr(Genotype(normal=cell, normal_concat=[2, 3, 4, 5], reduce=cell, reduce_concat=[2, 3, 4, 5]))


def _darts(tmp_path, rows, header="genotype,acc", name="d.csv"):
    lines = [header] + [",".join([f'"{_geno(k)}"'] + [str(v) for v in vals]) for k, *vals in rows]
    return _write(tmp_path, "\n".join(lines) + "\n", name)


def test_darts_good_table_and_text_column(tmp_path):
    p = _darts(tmp_path, [(0, 90, "a"), (1, "", "b"), (2, 80, "c")], header="genotype,acc,note")
    archs, truth = load_truth(p, "darts")
    assert len(archs) == 3 and list(truth) == ["acc"] and np.isnan(truth["acc"][1])


def test_darts_one_bad_cell_is_an_error(tmp_path):
    p = _darts(tmp_path, [(0, 90), (1, "90%"), (2, 80)])
    with pytest.raises(ValueError, match=r"line 3: column 'acc' holds '90%'") as e:
        load_truth(p, "darts")
    assert str(p) in str(e.value)


def test_darts_infinite_accuracy_is_an_error(tmp_path):
    p = _darts(tmp_path, [(0, 90), (1, 85), (2, "inf")])
    with pytest.raises(ValueError, match=r"line 4: column 'acc' holds 'inf', which is not a finite number"):
        load_truth(p, "darts")


def test_darts_duplicate_genotype_names_both_lines(tmp_path):
    p = _darts(tmp_path, [(0, 90), (1, 85), (0, 80)])
    with pytest.raises(ValueError, match="duplicate genotype on lines 2 and 4"):
        load_truth(p, "darts")


def test_darts_bad_genotype_names_file_and_line(tmp_path):
    p = _write(tmp_path, f'genotype,acc\n"{_geno(0)}",90\n"Genotype(normal=[])",80\n')
    with pytest.raises(ValueError, match=r"d?.csv, line 3: invalid genotype") as e:
        load_truth(p, "darts")
    assert str(p) in str(e.value)


def test_darts_header_only_says_no_rows(tmp_path):
    p = _write(tmp_path, "genotype,acc\n")
    with pytest.raises(ValueError, match="has a header but no data rows"):
        load_truth(p, "darts")
    with pytest.raises(ValueError, match="no 'genotype' column; columns found: \\['arch', 'acc'\\]"):
        load_truth(_write(tmp_path, f"arch,acc\n{A0},1\n", "n.csv"), "darts")


def test_darts_short_row_is_a_clear_error(tmp_path):
    p = _write(tmp_path, f'genotype,acc,acc2\n"{_geno(0)}",90,1\n"{_geno(1)}",80\n')
    with pytest.raises(ValueError, match="line 3: 2 fields, the header has 3"):
        load_truth(p, "darts")


def test_darts_bom_is_accepted(tmp_path):
    p = _write(tmp_path, f'genotype,acc\n"{_geno(0)}",90\n', encoding="utf-8-sig")
    archs, truth = load_truth(p, "darts")
    assert len(archs) == 1 and list(truth) == ["acc"]


def test_split_train_of_an_image_data_refuses_a_positional_portion():
    from fastnas.data import load_dataset, split_train

    data = load_dataset("synthetic", n=64, seed=0)
    with pytest.raises(TypeError, match="pass train_portion=... by keyword"):
        split_train(data, 0.8)
    w, a = split_train(data, train_portion=0.8)
    assert (len(w), len(a)) == (51, 13)
