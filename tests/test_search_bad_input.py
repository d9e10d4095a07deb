"""Bad input to the search (settings, data, devices, run folders, checkpoints) and to the spaces API gets a
clear ValueError / TypeError / FileExistsError naming the setting and the value, before anything is
written: never a torch RuntimeError from inside the first step, a silently ignored setting, or a search
that runs and returns a meaningless answer.

Searches here are tiny (synthetic 16x16 images, one NB201 cell per stage, 4-8 channels, 1-2 steps).
"""
import io
import json
import math
import os

import pytest
import torch

import fastnas
import fastnas.search.engine as engine
from fastnas.cli import main as cli_main
from fastnas.data import from_tensors
from fastnas.devices import resolve_device
from fastnas.search import SearchConfig, Searcher
from fastnas.spaces import (NB201_PRIMITIVES, Genotype, arch_to_str, derive_arch, derive_genotype, parse_genotype,
                            validate_genotype)

TINY = dict(space="nb201", method="darts", dataset="synthetic", dataset_options={"n": 64, "image_size": 16},
            batch_size=4, init_channels=4, layers=1, epochs=1, steps_per_epoch=1, warmup_epochs=0,
            hessian_iters=0, device="cpu", quiet=True)
CLI = ["search", "--space", "nb201", "--method", "darts", "--dataset", "synthetic", "--dataset-option", "n=64",
       "--dataset-option", "image_size=16", "--epochs", "1", "--steps_per_epoch", "1", "--layers", "1",
       "--init_channels", "4", "--batch_size", "4", "--warmup_epochs", "0", "--hessian_iters", "0", "--quiet",
       "--device", "cpu"]


def _cli(capsys, *args):
    rc = cli_main([*CLI, *args])
    err = capsys.readouterr().err
    return rc, err


def _images(shape, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return from_tensors(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 10, layout="nchw", name="odd")


# ---------------------------------------------------------------------------------------------------
# 1. train_portion is honoured (it was passed as split_train's `labels` and ignored: always 0.5)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("portion, sizes", [(0.5, (32, 32)), (0.8, (51, 13)), (0.25, (16, 48))])
def test_train_portion_sets_the_split(tmp_path, portion, sizes):
    # DARTS/PC-DARTS: split = floor(train_portion * N) weight images, the rest for the architecture
    s = Searcher(SearchConfig(**TINY, train_portion=portion, out_dir=str(tmp_path / "r")))
    assert (s.w_loader.images.shape[0], s.a_loader.images.shape[0]) == sizes
    assert s.eval_loader.images.shape[0] == sizes[1]


def test_train_portion_that_empties_a_half_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"train_portion=0.01 of 64 images leaves one half empty"):
        fastnas.search(**TINY, train_portion=0.01, out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_batch_size_error_reports_the_real_split(tmp_path):
    # 0.9 of 64: 57 weight images, 7 architecture images: a batch of 8 does not fit the smaller half
    with pytest.raises(ValueError, match=r"batch_size=8 is larger than the data: 64 images split by "
                                         r"train_portion=0.9 into 57 for the weights and 7 for the architecture"):
        fastnas.search(**dict(TINY, batch_size=8), train_portion=0.9, out_dir=str(tmp_path / "r"))


# ---------------------------------------------------------------------------------------------------
# 2. warmup_epochs >= epochs would never take an architecture step
# ---------------------------------------------------------------------------------------------------
def test_warmup_not_below_epochs_is_refused():
    with pytest.raises(ValueError, match=r"warmup_epochs=15 >= epochs=10: method 'pc-darts' .*never take one.*"
                                         r"--warmup_epochs 3"):
        SearchConfig(epochs=10).resolved()   # the README's quick look: --epochs 10, default warmup 15
    with pytest.raises(ValueError, match=r"warmup_epochs=2 >= epochs=2"):
        SearchConfig(method="darts", epochs=2, warmup_epochs=2).resolved()
    with pytest.raises(ValueError, match=r"warmup_epochs=1 >= epochs=1.*--warmup_epochs 0"):
        SearchConfig(method="mae", epochs=1, warmup_epochs=1).resolved()


def test_warmup_check_spares_methods_without_architecture_steps():
    # MSR-DARTS never takes an architecture step; zero-shot methods train nothing
    SearchConfig(method="msr-darts", epochs=2).resolved()
    SearchConfig(method="random", space="nb201", epochs=1).resolved()
    SearchConfig(method="swap-evolution", space="nb201", epochs=1).resolved()
    # DrNAS keeps its own, stricter message (every stage must take architecture steps)
    with pytest.raises(ValueError, match="warmup_epochs=10: DrNAS trains only the weights for the first"):
        SearchConfig(method="drnas", init_channels=24, epochs=20, warmup_epochs=10).resolved()
    # ... and without progressive stages the general rule applies
    with pytest.raises(ValueError, match="warmup_epochs=4 >= epochs=4"):
        SearchConfig(method="drnas", drnas_progressive=False, epochs=4, warmup_epochs=4).resolved()


def test_warmup_epochs_keep_the_architecture_fixed_until_they_end(tmp_path):
    """The warm-up still works when it ends before the last epoch (replaces test_search.py's
    warmup_epochs=5, epochs=1 case, which the check above now refuses)."""
    kw = dict(TINY, warmup_epochs=1, epochs=2)
    result = fastnas.search(**kw, out_dir=str(tmp_path / "r"))
    fresh = Searcher(SearchConfig(**kw, out_dir=str(tmp_path / "s")))
    initial = {k: [[round(v, 6) for v in r] for r in w.tolist()] for k, w in fresh.model.arch_weights().items()}
    assert [h["arch_step"] for h in result.history] == [False, True]
    assert result.history[0]["arch_weights"] == initial       # untouched during the warm-up epoch
    assert result.history[1]["arch_weights"] != initial       # moved once the warm-up is over


def test_cli_refuses_the_readme_quick_look_without_warmup(capsys, tmp_path):
    rc, err = _cli(capsys, "--epochs", "2", "--warmup_epochs", "15", "--out_dir", str(tmp_path / "r"))
    assert rc == 2 and "warmup_epochs=15 >= epochs=2" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------
# 3. optimizer / schedule settings: types, finiteness, ranges
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, error, match", [
    (dict(grad_clip=-5.0), ValueError, r"grad_clip must be > 0 .*0 / None to turn clipping off, got -5.0"),
    (dict(grad_clip=math.nan), ValueError, "grad_clip must be a finite number, got nan"),
    (dict(grad_clip=math.inf), ValueError, "grad_clip must be a finite number, got inf"),
    (dict(learning_rate=math.inf), ValueError, "learning_rate must be a finite number, got inf"),
    (dict(learning_rate=math.nan), ValueError, "learning_rate must be a finite number, got nan"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate must be a number, got str '0.1'"),
    (dict(learning_rate_min=10.0), ValueError, "learning_rate_min=10.0 is larger than learning_rate=0.025"),
    (dict(learning_rate_min=-1.0), ValueError, "learning_rate_min must be >= 0"),
    (dict(momentum=math.nan), ValueError, "momentum must be a finite number"),
    (dict(momentum=1.5), ValueError, r"momentum must lie in \[0, 1\)"),
    (dict(weight_decay=-3e-4), ValueError, "weight_decay must be >= 0"),
    (dict(weight_decay=math.inf), ValueError, "weight_decay must be a finite number"),
    (dict(arch_learning_rate=math.nan), ValueError, "arch_learning_rate must be a finite number"),
    (dict(arch_learning_rate=0.0), ValueError, "arch_learning_rate must be > 0"),
    (dict(arch_weight_decay=math.inf), ValueError, "arch_weight_decay must be a finite number"),
    (dict(arch_betas=(0.5,)), TypeError, r"arch_betas must be a pair of numbers .*got tuple \(0.5,\)"),
    (dict(arch_betas=None), TypeError, "arch_betas must be a pair of numbers"),
    (dict(arch_betas=(0.5, 1.0)), ValueError, r"arch_betas must both lie in \[0, 1\)"),
    (dict(warmup_epochs=0.5), TypeError, "warmup_epochs must be an integer, got float 0.5"),
    (dict(warmup_epochs=-1), ValueError, "warmup_epochs must be an integer >= 0, got -1"),
    (dict(steps_per_epoch="3"), TypeError, "steps_per_epoch must be an integer or None, got str '3'"),
    (dict(steps_per_epoch=1.5), TypeError, "steps_per_epoch must be an integer or None, got float 1.5"),
    (dict(epochs="2"), TypeError, "epochs must be an integer, got str '2'"),
    (dict(batch_size=8.0), TypeError, "batch_size must be a positive integer, got float 8.0"),
    (dict(train_portion="0.5"), TypeError, "train_portion must be a number, got str '0.5'"),
    (dict(prune="params", keep="0.5"), TypeError, r"keep \(the fraction of ops kept by pruning\) must be a number"),
    (dict(prune="params", keep=math.nan), ValueError, r"keep \(the fraction of ops kept by pruning\) must be a finite"),
    (dict(proxy_settings={"count": "suite-zero"}), ValueError, "method 'darts' without prune would ignore them"),
    (dict(prune="params,flops", proxy_settings={"count": "suite-zero"}), ValueError,
     "with prune='params,flops' they would be ignored"),
    (dict(prune="flops", proxy_settings={"count": 3}), TypeError, "proxy 'flops': setting 'count' must be a string"),
    (dict(prune="flops", proxy_settings={"cuont": "x"}), TypeError, r"proxy 'flops' has no setting\(s\) \['cuont'\]"),
    (dict(prune="snip", proxy_settings={"repeats": 3}), ValueError, r"proxy_settings\['repeats'\]: pruning compares"),
    (dict(method="swap-evolution", proxy="swap", proxy_settings={"gaussian_init": "false"}), TypeError,
     "setting 'gaussian_init' must be True or False, got str 'false'"),
    (dict(space="darts", layers=2), ValueError, "layers=2: the DARTS supernet places reduction cells"),
    (dict(space="darts", method="drnas", layers=1), ValueError, "with fewer than 3 layers it has no normal cell"),
    (dict(seed=1.5), TypeError, "seed must be an integer, got float 1.5"),
    (dict(seed=None), TypeError, "seed must be an integer, got NoneType None"),
    (dict(seed=-1), ValueError, r"seed must be an integer in \[0, 4294967296\), got -1"),
    (dict(method="darts-minus", aux_skip_beta0=math.inf), ValueError, "aux_skip_beta0 must be a finite number"),
    (dict(clr_power="2"), TypeError, "clr_power must be a number or None, got str"),
    (dict(drnas_reg_scale=math.nan), ValueError, "drnas_reg_scale must be a finite number"),
    (dict(backend=3), TypeError, "backend must be a backend name"),
    (dict(device=0), TypeError, "device must be a string"),
    (dict(out_dir=3), TypeError, "out_dir must be a path"),
    (dict(unrolled="false"), TypeError, r"unrolled must be True or False \(or None for the default\), got str"),
    (dict(quiet=1), TypeError, "quiet must be True or False, got int 1"),
    (dict(edge_norm="no"), TypeError, "edge_norm must be True or False"),
    (dict(dataset_options={"split": "foo"}), ValueError, "dataset option 'split' is the search's own"),
    (dict(hessian_iters=2.0), TypeError, r"hessian_iters \(0 turns the Hessian monitor off\) must be an integer"),
    (dict(prune="params,params"), ValueError, "lists params twice"),
])
def test_bad_settings_are_refused_by_name(settings, error, match):
    base = dict(method="darts", epochs=2, warmup_epochs=0)
    with pytest.raises(error, match=match):
        SearchConfig(**{**base, **settings}).resolved()


@pytest.mark.parametrize("settings", [dict(prune="flops", proxy_settings={"count": "suite-zero"}),
                                      dict(prune="reg_swap", proxy_settings={"repeats": 4}),
                                      dict(grad_clip=0.0), dict(grad_clip=None), dict(learning_rate_min=0.025),
                                      dict(arch_betas=[0.9, 0.999]), dict(seed=0), dict(momentum=0.0)])
def test_legal_edge_values_still_resolve(settings):
    c = SearchConfig(method="darts", epochs=2, warmup_epochs=0, **settings).resolved()
    assert isinstance(c.arch_betas, tuple) and len(c.arch_betas) == 2


def test_negative_grad_clip_no_longer_flips_the_gradients(tmp_path):
    with pytest.raises(ValueError, match="grad_clip"):
        fastnas.search(**TINY, grad_clip=-5.0, out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_zero_shot_checks_the_seed_too(tmp_path):
    with pytest.raises(TypeError, match="seed must be an integer, got float 1.5"):
        fastnas.search(space="nb201", method="random", proxy="params", dataset="synthetic", cycles=2, seed=1.5,
                       quiet=True, device="cpu", out_dir=str(tmp_path / "z"))


@pytest.mark.parametrize("args, message", [
    (["--grad_clip", "nan"], "grad_clip must be a finite number, got nan"),
    (["--learning_rate", "inf"], "learning_rate must be a finite number, got inf"),
    (["--grad_clip", "-1"], "grad_clip must be > 0"),
    (["--learning_rate_min", "10"], "learning_rate_min=10.0 is larger than learning_rate=0.025"),
])
def test_cli_nonfinite_settings_exit_2(capsys, tmp_path, args, message):
    rc, err = _cli(capsys, *args, "--out_dir", str(tmp_path / "r"))
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------
# 4. devices
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, match", [
    ("tpu", r"device 'tpu' is not a device: use 'cpu', 'cuda' or 'cuda:N'"),
    ("cuda:x", r"device 'cuda:x' is not a device"),
    ("meta", r"device 'meta': fastnas runs on 'cpu', 'cuda' or 'cuda:N', not 'meta'"),
    ("", r"device '' is not a device"),
])
def test_resolve_device_names_the_bad_device(device, match):
    with pytest.raises(ValueError, match=match):
        resolve_device(device)


def test_resolve_device_accepts_the_documented_forms():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device\\(s\\) are visible"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("device", ["meta", "tpu", "cuda:x"])
def test_search_refuses_a_bad_device_before_writing(tmp_path, device):
    with pytest.raises(ValueError, match=f"device {device!r}"):
        fastnas.search(**dict(TINY, device=device), out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_cli_bad_device_exits_2(capsys, tmp_path):
    rc, err = _cli(capsys, "--device", "tpu", "--out_dir", str(tmp_path / "r"))
    assert rc == 2 and "device 'tpu'" in err and "'cuda:N'" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 5. an explicit backend that cannot run here is refused before anything is written
# ---------------------------------------------------------------------------------------------------
def test_unavailable_backend_is_a_value_error_before_the_run_folder(tmp_path):
    # the cuda backend never runs on CPU tensors, whatever the build
    with pytest.raises(ValueError, match=r"backend='cuda' cannot run on device cpu"):
        fastnas.search(**TINY, backend="cuda", out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_cli_unavailable_backend_exits_2(capsys, tmp_path):
    rc, err = _cli(capsys, "--backend", "cuda", "--out_dir", str(tmp_path / "r"))
    assert rc == 2 and "backend='cuda' cannot run" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_unknown_backend_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown fastnas backend 'cuda9'"):
        fastnas.search(**TINY, backend="cuda9", out_dir=str(tmp_path / "r"))


# ---------------------------------------------------------------------------------------------------
# 6. out_dir must be a folder
# ---------------------------------------------------------------------------------------------------
def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x\n")
    with pytest.raises(FileExistsError, match=r"out_dir '.*afile' is a file, not a folder"):
        fastnas.search(**TINY, out_dir=str(f))
    with pytest.raises(FileExistsError, match=r"out_dir '.*afile/sub' cannot be created: '.*afile' is a file"):
        fastnas.search(**TINY, out_dir=str(f / "sub"))
    assert f.read_text() == "x\n"


def test_an_empty_out_dir_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="out_dir is an empty path"):
        fastnas.search(**TINY, out_dir="")
    assert list(tmp_path.iterdir()) == []


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    class Frozen(engine.datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 24, 12, 0, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine.datetime, "datetime", Frozen)
    cfg = SearchConfig(**TINY).resolved()
    roots = [Searcher._prepare_run_dir(cfg).root for _ in range(3)]
    assert [str(r) for r in roots] == [f"fastnas-runs/nb201-darts-20261124-120000{s}" for s in ("", "-2", "-3")]


def test_resume_true_without_a_checkpoint_never_overwrites_what_is_not_this_runs(tmp_path):
    """--resume on a folder with no checkpoint starts afresh only over this same run's leftovers."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"my": 1}')
    (user / "genotype.txt").write_text("notes\n")
    (user / "metrics.jsonl").write_text('{"my": 1}\n')
    before = {p.name: p.read_text() for p in user.iterdir()}
    with pytest.raises(FileExistsError, match="no checkpoint to resume from.*config.json"):
        fastnas.search(**TINY, out_dir=str(user), resume=True)
    assert {p.name: p.read_text() for p in user.iterdir()} == before
    # A finished run whose checkpoint is gone keeps its result.
    done = tmp_path / "done"
    fastnas.search(**TINY, out_dir=str(done))
    (done / "checkpoint.pt").unlink()
    result = (done / "result.json").read_text()
    with pytest.raises(FileExistsError, match="finished search"):
        fastnas.search(**TINY, out_dir=str(done), resume=True)
    assert (done / "result.json").read_text() == result
    # Another search's leftovers (other settings) are not this run's either.
    (done / "result.json").unlink()
    other = dict(TINY, seed=TINY.get("seed", 0) + 1)
    with pytest.raises(FileExistsError, match="other settings"):
        fastnas.search(**other, out_dir=str(done), resume=True)
    # This run killed before its first checkpoint: restarts, and metrics.jsonl holds only the new rows.
    again = fastnas.search(**TINY, out_dir=str(done), resume=True)
    rows = (done / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len(again.history) == TINY["epochs"]


def test_cli_a_folder_it_cannot_write_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root may write anyway: the file system refuses instead
            def read_only(self, path, obj):
                raise OSError(30, "Read-only file system", str(path))
            monkeypatch.setattr(engine.RunDir, "write_json", read_only)
        rc = cli_main(CLI + ["--out_dir", str(ro)])
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert rc == 2 and "fastnas search: error:" in err and str(ro) in err, err


def test_resume_true_without_out_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no out_dir is given"):
        fastnas.search(**TINY, resume=True)
    assert list(tmp_path.iterdir()) == []


def test_a_new_run_never_replaces_a_users_files_but_restarts_over_a_bare_config(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}\n')
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(FileExistsError, match=r"already has config.json, which a run writes"):
        fastnas.search(**TINY, out_dir=str(out))
    assert (out / "config.json").read_text() == '{"my": "settings"}\n'
    (out / "config.json").unlink()
    (out / "collapse.png").write_bytes(b"png")
    with pytest.raises(FileExistsError, match=r"already has collapse.png"):
        fastnas.search(**TINY, out_dir=str(out))
    (out / "collapse.png").unlink()
    # a search killed before its first checkpoint leaves only its config.json: starting again is fine
    (out / "config.json").write_text(json.dumps(SearchConfig(**TINY).to_dict()))
    assert fastnas.search(**TINY, out_dir=str(out)).epochs == 1
    assert (out / "notes.txt").read_text() == "mine\n"


def test_resuming_into_another_folder_copies_the_run_and_refuses_a_folder_with_a_run(tmp_path):
    kw = dict(TINY, epochs=2)
    first = fastnas.search(**kw, out_dir=str(tmp_path / "a"))
    (tmp_path / "a" / "checkpoint.pt").write_bytes(_epoch_one_checkpoint(tmp_path, kw))
    other = fastnas.search(**dict(kw, seed=7), out_dir=str(tmp_path / "b"))
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(FileExistsError, match="already holds a search .* resuming .*a into it would mix two runs"):
        fastnas.search(**kw, out_dir=str(tmp_path / "b"), resume=str(tmp_path / "a"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before and other.epochs == 2
    forked = fastnas.search(**kw, out_dir=str(tmp_path / "c"), resume=str(tmp_path / "a" / "checkpoint.pt"))
    assert forked.arch == first.arch and forked.epochs == 2
    c = tmp_path / "c"
    assert {"config.json", "checkpoint.pt", "genotype.txt", "metrics.jsonl", "result.json"} <= {p.name for p in c.iterdir()}
    assert json.loads((c / "config.json").read_text())["seed"] == SearchConfig(**kw).seed
    assert (c / "genotype.txt").read_text().strip() == first.arch
    assert len((c / "metrics.jsonl").read_text().splitlines()) == 2


def _epoch_one_checkpoint(tmp_path, kw):
    """The checkpoint of ``kw``'s run after its first epoch (a one-epoch run of the same settings)."""
    import torch as _torch

    fastnas.search(**dict(kw, epochs=1), out_dir=str(tmp_path / "one"))
    ckpt = _torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    ckpt["config"]["epochs"] = kw["epochs"]
    buf = io.BytesIO()
    _torch.save(ckpt, buf)
    return buf.getvalue()


def test_run_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fastnas.search(**TINY, out_dir=str(tmp_path / "r"))
    finally:
        os.umask(old)
    for name in ("config.json", "genotype.txt", "result.json", "checkpoint.pt", "metrics.jsonl"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name


def test_resume_with_the_device_spelt_out_is_the_same_run(tmp_path):
    kw = dict(TINY, device=None)
    fastnas.search(**kw, out_dir=str(tmp_path / "r"))
    assert fastnas.search(**dict(kw, device=str(resolve_device(None))), out_dir=str(tmp_path / "r"),
                          resume=True).epochs == 1


def test_resume_with_a_dataset_option_spelt_out_at_its_default_is_the_same_run(tmp_path):
    out = str(tmp_path / "r")
    fastnas.search(**TINY, out_dir=out)
    spelt = dict(TINY["dataset_options"], num_classes=10, noise=48.0, seed=0)   # make_synthetic's defaults
    assert fastnas.search(**dict(TINY, dataset_options=spelt), out_dir=out, resume=True).epochs == 1
    with pytest.raises(ValueError, match=r"dataset_options: checkpoint .*'seed': 1"):
        fastnas.search(**dict(TINY, dataset_options=dict(spelt, seed=1)), out_dir=out, resume=True)


@pytest.mark.parametrize("method", ["darts", "msr-darts"])
def test_a_checkpoint_older_than_a_setting_resumes_unless_the_setting_is_its_methods(tmp_path, method):
    """A setting added after a checkpoint was written is absent from its config: the run had the
    setting's default behaviour, except for a setting of its own method (that method ran differently)."""
    import torch as _torch

    out = tmp_path / "r"
    fastnas.search(**dict(TINY, method=method), out_dir=str(out))
    ckpt = _torch.load(out / "checkpoint.pt", weights_only=False)
    for name in ("msr_operator", "msr_spectral_norm"):
        del ckpt["config"][name]
    _torch.save(ckpt, out / "checkpoint.pt")
    if method == "darts":
        assert fastnas.search(**dict(TINY, method=method), out_dir=str(out), resume=True).epochs == 1
    else:
        with pytest.raises(ValueError, match=r"msr_operator: checkpoint None, now 'last_conv'"):
            fastnas.search(**dict(TINY, method=method), out_dir=str(out), resume=True)


def test_dataset_options_compare_by_the_data_they_load():
    from fastnas.data.datasets import same_dataset_options

    assert same_dataset_options("synthetic", {}, {"n": 512, "image_size": 32})
    assert not same_dataset_options("synthetic", {}, {"n": 256})
    assert same_dataset_options("cifar10", {"timeout": 5.0, "download": True}, {})   # how it is fetched only
    assert same_dataset_options("data/x.npz", {"layout": "auto"}, {})
    assert not same_dataset_options("data/x.npz", {"layout": "nchw"}, {})
    assert not same_dataset_options("somewhere", {"n": 1}, {})   # unknown loader: compared as given


def test_a_second_search_on_a_folder_in_use_is_refused_until_the_first_ends(tmp_path):
    out = str(tmp_path / "r")
    first = Searcher(SearchConfig(**TINY, out_dir=out))
    with pytest.raises(FileExistsError, match="in use by another fastnas search that is still running"):
        fastnas.search(**TINY, out_dir=out)
    with pytest.raises(FileExistsError, match="in use by another fastnas search"):
        fastnas.search(**TINY, out_dir=out, resume=True)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json"]   # the first's, untouched
    first.run()
    assert fastnas.search(**TINY, out_dir=out, resume=True).epochs == 1   # free once the first has ended


def test_a_start_that_fails_leaves_the_folder_free(tmp_path):
    out = str(tmp_path / "r")
    fastnas.search(**TINY, out_dir=out)
    with pytest.raises(ValueError, match="settings differ") as failed:
        fastnas.search(**dict(TINY, learning_rate=0.05), out_dir=out, resume=True)
    assert failed.value is not None   # the failed Searcher is still referenced by the traceback
    assert fastnas.search(**TINY, out_dir=out, resume=True).epochs == 1


def test_a_killed_searchs_lock_goes_with_its_process(tmp_path):
    """A real second process holds the folder's lock; while it lives the folder is refused, once it is
    killed (no clean-up runs) the folder is free: no stale lock is left behind."""
    import subprocess
    import sys

    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from fastnas.search import RunDir; "
                               f"d = RunDir({str(out)!r}); d.lock(); print('locked', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match="in use by another fastnas search"):
            fastnas.search(**TINY, out_dir=str(out))
    finally:
        holder.kill()
        holder.wait()
    assert fastnas.search(**TINY, out_dir=str(out)).epochs == 1
    assert not [p for p in out.iterdir() if "lock" in p.name]


def test_b_darts_without_enhancement_cells_warns_that_the_normal_cell_is_not_searched(tmp_path):
    kw = dict(TINY, space="darts", method="b-darts", layers=None, enhancement_cells=0, conv_blocks=1)
    with pytest.warns(UserWarning, match="the normal half of the Genotype is not searched"):
        Searcher(SearchConfig(**kw, out_dir=str(tmp_path / "r")))


def test_cli_out_dir_under_a_file_exits_2(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x\n")
    rc, err = _cli(capsys, "--out_dir", str(f / "sub"))
    assert rc == 2 and "is a file, not a folder" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 7. resume from a damaged checkpoint
# ---------------------------------------------------------------------------------------------------
def _damaged(kind):
    if kind == "garbage":
        return b"garbage"
    if kind == "garbage-newline":
        return b"garbage\n"
    buf = io.BytesIO()
    torch.save({"version": 1, "config": {}, "model": {"w": torch.randn(64, 64)}}, buf)
    if kind == "truncated":
        return buf.getvalue()[: len(buf.getvalue()) // 2]
    buf = io.BytesIO()
    torch.save(torch.zeros(3), buf)   # a readable torch file, but not a search's state
    return buf.getvalue()


@pytest.mark.parametrize("kind, match", [
    ("garbage", "is not a readable fastnas checkpoint"), ("garbage-newline", "is not a readable fastnas checkpoint"),
    ("truncated", "is not a readable fastnas checkpoint"), ("tensor", "is not a fastnas checkpoint"),
])
def test_resume_from_a_damaged_checkpoint_names_it(tmp_path, kind, match):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(_damaged(kind))
    with pytest.raises(ValueError, match=f"cannot resume: .*checkpoint.pt {match}"):
        fastnas.search(**TINY, out_dir=str(out), resume=True)


def test_cli_resume_from_a_truncated_checkpoint_exits_2(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(_damaged("truncated"))
    rc, err = _cli(capsys, "--out_dir", str(out), "--resume")
    assert rc == 2 and "is not a readable fastnas checkpoint" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 8. images the supernets cannot take
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, space, match", [
    ((1, 16, 16), "nb201", r"take RGB images \(N, 3, H, W\), the data is \(64, 1, 16, 16\)"),
    ((4, 16, 16), "darts", r"take RGB images \(N, 3, H, W\), the data is \(64, 4, 16, 16\)"),
    ((3, 2, 2), "nb201", r"image size 2x2 is not divisible by 4: the nb201 supernet halves the resolution 2"),
    ((3, 10, 16), "nb201", r"image size 10x16 is not divisible by 4"),
    ((3, 6, 6), "darts", r"image size 6x6 is not divisible by 4: the darts supernet"),
])
def test_images_the_supernet_cannot_take_are_refused(tmp_path, shape, space, match):
    kw = dict(TINY, space=space, dataset=_images(shape), dataset_options={}, layers=1 if space == "nb201" else 3)
    with pytest.raises(ValueError, match=match):
        fastnas.search(**kw, out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("space, layers, side", [("nb201", 1, 4), ("darts", 3, 4)])
def test_the_smallest_accepted_images_search(tmp_path, space, layers, side):
    kw = dict(TINY, space=space, dataset=_images((3, side, side)), dataset_options={}, layers=layers)
    result = fastnas.search(**kw, out_dir=str(tmp_path / "r"))
    assert result.epochs == 1


def test_cli_grayscale_data_exits_2(capsys, tmp_path):
    import numpy as np

    path = tmp_path / "gray.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 255, (64, 16, 16, 1), dtype=np.uint8), y=np.arange(64) % 10)
    args = [a for a in CLI]
    i = args.index("synthetic")
    args[i] = str(path)
    del args[i + 1:i + 5]  # the synthetic dataset options
    rc = cli_main([*args, "--out_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "RGB images" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 9. the spaces API
# ---------------------------------------------------------------------------------------------------
PCDARTS = ("Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
           "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
           "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
           "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), "
           "('sep_conv_3x3', 2)], reduce_concat=[2, 3, 4, 5])")


@pytest.mark.parametrize("value", [None, 3, "Genotype(...)", [("sep_conv_3x3", 0)]])
def test_validate_genotype_of_a_non_genotype_is_a_type_error(value):
    with pytest.raises(TypeError, match="validate_genotype expects a Genotype"):
        validate_genotype(value)


@pytest.mark.parametrize("concat, match", [
    ("[0, 1]", r"normal_concat = \[0, 1\]: state 0 is a cell input"),
    ("[2, 2]", r"normal_concat = \[2, 2\] repeats a state"),
    ("[1, 2, 3, 4, 5]", r"state 1 is a cell input"),
])
def test_genotype_concat_must_list_distinct_intermediate_states(concat, match):
    with pytest.raises(ValueError, match=match):
        parse_genotype(PCDARTS.replace("normal_concat=[2, 3, 4, 5]", f"normal_concat={concat}"))
    g = parse_genotype(PCDARTS)
    with pytest.raises(ValueError, match=match):
        validate_genotype(g._replace(normal_concat=eval(concat)))


def test_valid_genotypes_still_validate():
    g = parse_genotype(PCDARTS)
    assert validate_genotype(g) is g
    assert validate_genotype(g._replace(normal_concat=[5, 2, 3])).normal_concat == [5, 2, 3]
    assert parse_genotype(PCDARTS.replace("[2, 3, 4, 5]", "range(2, 6)")) == g


@pytest.mark.parametrize("value", [None, "alphas", [[1.0, 2.0], [3.0]]])
def test_derive_arch_of_a_non_tensor_names_the_alphas(value):
    with pytest.raises(TypeError, match="NB201 alphas must be a tensor or array of numbers"):
        derive_arch(value)


def test_derive_arch_refuses_infinite_alphas_but_keeps_pruned_ops():
    with pytest.raises(ValueError, match=r"NB201 alphas contain \+inf"):
        derive_arch(torch.full((6, 5), float("inf")))
    with pytest.raises(ValueError, match=r"edge\(s\) \[2\] have every op at -inf"):
        a = torch.zeros(6, 5)
        a[2] = float("-inf")
        derive_arch(a)
    with pytest.raises(ValueError, match="without 'none'"):
        a = torch.zeros(6, 5)
        a[0, 1:] = float("-inf")
        derive_arch(a, exclude_none=True)
    # -inf marks a pruned op (SearchNetwork.masked_alphas): still derived, never chosen
    a = torch.zeros(6, 5)
    a[:, 0] = float("-inf")
    a[:, 3] = 1.0
    assert derive_arch(a) == (NB201_PRIMITIVES[3],) * 6


def test_derive_genotype_refuses_infinite_alphas_and_betas():
    with pytest.raises(ValueError, match=r"alphas_normal contain \+inf"):
        derive_genotype(torch.full((14, 8), float("inf")), torch.zeros(14, 8))
    with pytest.raises(ValueError, match="betas_reduce contain NaN or infinite"):
        derive_genotype(torch.zeros(14, 8), torch.zeros(14, 8), None, torch.full((14,), float("inf")))
    with pytest.raises(TypeError, match="alphas_normal must be a tensor or array of numbers, got NoneType"):
        derive_genotype(None, torch.zeros(14, 8))
    assert isinstance(derive_genotype(torch.zeros(14, 8), torch.zeros(14, 8)), Genotype)


def test_arch_to_str_of_none_is_a_type_error():
    with pytest.raises(TypeError, match="expected an NB201 arch"):
        arch_to_str(None)


def test_split_train_is_called_with_the_portion_by_name(monkeypatch, tmp_path):
    """The engine passes train_portion by keyword: split_train's 2nd positional parameter is labels."""
    seen = {}
    original = engine.split_train

    def spy(data, *args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(engine, "split_train", spy)
    Searcher(SearchConfig(**TINY, train_portion=0.75, out_dir=str(tmp_path / "r")))
    assert seen == {"args": (), "kwargs": {"train_portion": 0.75}}


def test_every_setting_on_by_default_can_be_turned_off_on_the_command_line():
    import dataclasses

    from fastnas.cli import build_parser

    on = [f.name for f in dataclasses.fields(SearchConfig) if f.default is True]
    assert {"drnas_progressive", "msr_spectral_norm"} <= set(on)
    for name in on:
        args = build_parser().parse_args(["search", f"--no-{name.replace('_', '-')}"])
        assert getattr(args, name) is False, name
        assert getattr(build_parser().parse_args(["search"]), name) is True, name
