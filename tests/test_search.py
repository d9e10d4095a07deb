"""The search engine: the step's update rules, the loop, the run folder, resume, the API and the CLI.

Networks here are small (C=8, one cell per NB201 stage, 3 DARTS cells, 16x16 synthetic images) so the
whole file runs in well under a minute on 2 cores; the update rules are checked against explicit
computations in float64, the loop end to end.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fastnas
from fastnas.cli import main as cli_main
from fastnas.nn import SearchNetwork
from fastnas import _ext
from fastnas.ops import resolve
from fastnas.search import METHODS, SearchConfig, Searcher, SearchStep, count_skips
from fastnas.spaces import all_archs, arch_to_str, parse_arch, parse_genotype
from helpers import search_killed_in_step_then_resumed

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = SHARED_DATA / "cifar10_sample.npz"
REPO = Path(__file__).resolve().parents[1]

TINY = dict(dataset="synthetic", dataset_options={"n": 128, "image_size": 16}, batch_size=16, init_channels=8,
            device="cpu", steps_per_epoch=3, warmup_epochs=0, quiet=True)
TINY_NB201 = dict(TINY, space="nb201", layers=1, partial_channels=2)
TINY_DARTS = dict(TINY, space="darts", layers=3, partial_channels=2)


def _tiny_model(space="nb201", K=2, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    layers = 1 if space == "nb201" else 3
    return SearchNetwork(space, C=8, num_classes=10, layers=layers, partial_channels=K).to(dtype)


def _batch(n=8, size=16, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


# ---------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------
def test_defaults_are_pcdarts():
    c = SearchConfig().resolved()
    assert (c.space, c.method, c.batch_size, c.learning_rate, c.learning_rate_min, c.momentum) == \
        ("darts", "pc-darts", 256, 0.1, 0.0, 0.9)
    assert (c.weight_decay, c.grad_clip, c.epochs, c.train_portion, c.warmup_epochs) == (3e-4, 5.0, 50, 0.5, 15)
    assert (c.arch_learning_rate, c.arch_weight_decay, c.arch_betas) == (6e-4, 1e-3, (0.5, 0.999))
    assert (c.init_channels, c.partial_channels, c.edge_norm, c.unrolled) == (16, 4, True, False)
    d = SearchConfig(method="darts").resolved()
    assert (d.partial_channels, d.edge_norm, d.unrolled) == (1, False, False)
    assert SearchConfig(method="darts-2nd").resolved().unrolled is True
    # DARTS's own train_search.py settings for the DARTS family; an explicit setting wins
    for method in ("darts", "darts-2nd", "darts-minus"):
        m = SearchConfig(method=method, space="nb201").resolved()
        assert (m.batch_size, m.learning_rate, m.learning_rate_min, m.arch_learning_rate, m.warmup_epochs,
                m.epochs) == (64, 0.025, 0.001, 3e-4, 0, 50), method
    assert SearchConfig(method="darts", batch_size=32, warmup_epochs=5).resolved().batch_size == 32
    assert SearchConfig(method="mae", mae_base="darts").resolved().learning_rate == 0.025
    assert SearchConfig(method="mae").resolved().learning_rate == 0.1
    assert set(METHODS) >= {"darts", "darts-2nd", "pc-darts"}


@pytest.mark.parametrize("settings, error, match", [
    (dict(method="enas"), ValueError, "unknown method 'enas'"),
    (dict(space="nasbench101"), ValueError, "unknown space 'nasbench101'"),
    (dict(init_channels=18), ValueError, "init_channels=18 is not divisible by partial_channels=4"),
    (dict(batch_size=65), ValueError, r"batch_size=65 is larger than the data: 128 images"),
    (dict(train_portion=1.0), ValueError, "train_portion"),
    (dict(epochs=0), ValueError, "epochs must be a positive integer"),
    (dict(amp="int8"), ValueError, "amp must be"),
    (dict(batch_sise=8), TypeError, "did you mean 'batch_size'"),
    (dict(device="cuda:0"), ValueError, "no CUDA device"),
    (dict(nb201_table="x.csv"), ValueError, "nb201_table applies to space='nb201'"),
])
def test_bad_settings_name_the_problem(tmp_path, settings, error, match):
    if settings.get("device", "").startswith("cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    kw = dict(TINY_DARTS, out_dir=str(tmp_path / "run"), init_channels=16, partial_channels=None)
    kw.update(settings)
    with pytest.raises(error, match=match):
        fastnas.search(**kw)
    assert not (tmp_path / "run").exists(), "a failed start must not leave a run folder behind"


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        fastnas.search(**dict(TINY_DARTS, dataset="cifar10", dataset_options={}, data=str(tmp_path),
                              out_dir=str(tmp_path / "run")))


def test_dataset_option_the_dataset_does_not_take(tmp_path):
    with pytest.raises(TypeError, match="dataset_options"):
        fastnas.search(**dict(TINY_DARTS, dataset_options={"colour": 3}, out_dir=str(tmp_path / "run")))


# ---------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------
def test_first_order_arch_step_is_adam_on_arch_gradients_only():
    model = _tiny_model()
    x, y = _batch()
    step = SearchStep(model)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, model.arch_parameters())
    w_before = [p.detach().clone() for p in model.weight_parameters()]
    step.arch_step(x, y, x, y)
    for p, g in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in model.weight_parameters()), "the arch step computed weight gradients"
    assert all(torch.equal(p, w) for p, w in zip(model.weight_parameters(), w_before))
    assert model.alphas.grad.abs().sum() > 0


def test_weight_step_is_sgd_with_clipping():
    model = _tiny_model()
    x, y = _batch()
    step = SearchStep(model, grad_clip=0.05, momentum=0.0, weight_decay=0.0, learning_rate=0.5)
    ref = _tiny_model()
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, ref.weight_parameters())
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    scale = min(1.0, 0.05 / (float(norm) + 1e-6))
    out_loss, correct = step.weight_step(x, y)
    torch.testing.assert_close(out_loss, loss.detach())
    for p, p0, g in zip(model.weight_parameters(), ref.weight_parameters(), grads):
        torch.testing.assert_close(p.detach(), p0.detach() - 0.5 * scale * g, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.arch_parameters())
    assert correct.dtype == torch.int64 and 0 <= int(correct) <= x.shape[0]


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_the_weight_step_freezes_the_architecture_to_the_same_bits(space, monkeypatch):
    """The weight step runs its forward with the architecture parameters not requiring grad (the fused
    mixed ops then keep no op outputs and skip the alphas' dot products): the weights it reaches are
    bitwise those of a forward that recorded the alphas' graph, and the alphas' flags come back."""
    def stepped(freeze):
        model = _tiny_model(space, dtype=torch.float32)
        step = SearchStep(model)
        if not freeze:
            monkeypatch.setattr(step, "_architecture_frozen", contextlib.nullcontext)
        for i in range(2):
            step.weight_step(*_batch(dtype=torch.float32, seed=i))
        assert all(p.requires_grad for p in model.arch_parameters())
        return [p.detach().clone() for p in model.weight_parameters()]

    for a, b in zip(stepped(True), stepped(False)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_second_order_step_matches_exact_hessian_vector_product(space):
    """DARTS's unrolled gradient with the finite difference replaced by an exact double backward."""
    model = _tiny_model(space)
    xw, yw = _batch(seed=1)
    xa, ya = _batch(seed=2)
    wd, eta = 3e-4, 0.1
    # A tiny finite-difference step, so the difference quotient converges to the exact product. DARTS's
    # r = 0.01 is too coarse for an exact comparison: the gradient is only piecewise smooth (ReLU,
    # max-pool), and on the DARTS supernet steps of 1e-6..1e-2 cross kinks (errors of 10x); 1e-8 agrees
    # to ~1e-9 in float64.
    step = SearchStep(model, unrolled=True, learning_rate=eta, weight_decay=wd, hessian_eps=1e-8)
    # give the weight optimizer a momentum buffer, as in the middle of a search
    step.weight_step(xw, yw)
    buffers_before = [b.clone() for b in model.buffers()]
    weights_before = [p.detach().clone() for p in model.weight_parameters()]

    # exact reference on a copy
    ref = _tiny_model(space)  # fused ops too: their backward is differentiable (double backward)
    ref.load_state_dict(model.state_dict())
    W, A = ref.weight_parameters(), ref.arch_parameters()
    bufs = [step.w_optimizer.state[p]["momentum_buffer"] for p in model.weight_parameters()]
    lt = torch.nn.functional.cross_entropy(ref(xw), yw)
    gw = torch.autograd.grad(lt, W)
    w_unrolled = [(w - eta * (0.9 * b + g + wd * w)).detach() for w, b, g in zip(W, bufs, gw)]
    with torch.no_grad():
        for p, u in zip(W, w_unrolled):
            p.copy_(u)
    lv = torch.nn.functional.cross_entropy(ref(xa), ya)
    g = torch.autograd.grad(lv, A + W)
    d_alpha, v = g[:len(A)], g[len(A):]
    with torch.no_grad():
        for p, w0 in zip(W, weights_before):
            p.copy_(w0)
    lt = torch.nn.functional.cross_entropy(ref(xw), yw)
    gw = torch.autograd.grad(lt, W, create_graph=True)
    hvp = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(gw, v)), A)
    expected = [da - eta * h for da, h in zip(d_alpha, hvp)]

    step.a_optimizer.step = lambda *a, **k: None  # keep the gradients for inspection
    step.arch_step(xw, yw, xa, ya)
    for p, e in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
    for b, b0 in zip(model.buffers(), buffers_before):
        assert torch.equal(b, b0), "the unrolled passes changed BatchNorm buffers"
    for p, w0 in zip(model.weight_parameters(), weights_before):
        assert torch.equal(p.detach(), w0), "the unrolled passes did not restore the weights"


def test_amp_bf16_step_on_cpu_and_fp16_refused():
    model = _tiny_model(dtype=torch.float32)
    x, y = _batch(dtype=torch.float32)
    step = SearchStep(model, amp="bf16")
    loss, _ = step(x, y, x, y)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="fp16"):
        SearchStep(_tiny_model(dtype=torch.float32), amp="fp16")


def test_count_skips():
    assert count_skips("|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|") == 3
    g = parse_genotype("Genotype(normal=[('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), "
                       "('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), "
                       "('skip_connect', 0)], normal_concat=[2, 3, 4, 5], reduce=[('skip_connect', 0), "
                       "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
                       "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    assert count_skips(g) == 4


# ---------------------------------------------------------------------------------------------------
# The loop and the run folder
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, method", [(TINY_NB201, "pc-darts"), (TINY_DARTS, "pc-darts"),
                                        (TINY_NB201, "darts"), (TINY_NB201, "darts-2nd")])
def test_search_runs_and_writes_the_run_folder(tmp_path, kw, method):
    kw = dict(kw, method=method, epochs=2)
    if method != "pc-darts":
        kw["partial_channels"] = None
    out = tmp_path / "run"
    result = fastnas.search(**kw, out_dir=str(out))
    assert result.epochs == 2 and len(result.history) == 2
    text = (out / "genotype.txt").read_text().strip()
    assert text == result.arch
    if kw["space"] == "nb201":
        assert arch_to_str(parse_arch(text)) == text
        assert set(result.arch_parameters) == ({"alphas", "betas"} if method == "pc-darts" else {"alphas"})
    else:
        assert parse_genotype(text) == result.genotype
        assert result.arch_parameters["alphas_normal"].shape == (14, 8)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "epoch_time_s", "genotype",
                "skip_connects", "arch_weights"} <= set(r)
    assert rows[1]["lr"] < rows[0]["lr"], "the cosine schedule did not advance"
    for epoch in (1, 2):
        png = out / f"arch_epoch_{epoch:03d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "checkpoint.pt").is_file() and (out / "config.json").is_file()
    saved = json.loads((out / "result.json").read_text())
    assert saved["genotype"] == result.arch
    assert saved["fused_backend"] == resolve(None, torch.device("cpu"), torch.float32, "partial_channel_mix")
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_search_says_which_backend_runs_the_fused_ops(tmp_path, capsys):
    """A search that fell back to the pure-PyTorch reference (extension missing, or a checkout's
    source tree imported instead of the installed package) must say so, not just run slower."""
    fastnas.search(**dict(TINY_NB201, epochs=1, quiet=False), out_dir=str(tmp_path / "run"))
    err = capsys.readouterr().err
    expected = resolve(None, torch.device("cpu"), torch.float32, "partial_channel_mix")
    assert f"fastnas: fused ops on cpu: backend {expected}" in err
    assert ("the C++ extension is not usable" in err) == (_ext.load()[0] is None)


def test_existing_run_is_not_overwritten(tmp_path):
    out = str(tmp_path / "run")
    fastnas.search(**dict(TINY_NB201, epochs=1), out_dir=out)
    with pytest.raises(FileExistsError, match="resume"):
        fastnas.search(**dict(TINY_NB201, epochs=1), out_dir=out)


def test_resume_refuses_changed_settings(tmp_path):
    out = str(tmp_path / "run")
    fastnas.search(**dict(TINY_NB201, epochs=1), out_dir=out)
    with pytest.raises(ValueError, match="learning_rate"):
        fastnas.search(**dict(TINY_NB201, epochs=1, learning_rate=0.05), out_dir=out, resume=True)


@pytest.mark.parametrize("kw", [TINY_NB201, TINY_DARTS], ids=["nb201", "darts"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, kw):
    kw = dict(kw, epochs=3, warmup_epochs=1)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))

    crashed = tmp_path / "crashed"
    original = Searcher._train_epoch

    def crash_in_third_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return original(self, epoch)

    monkeypatch.setattr(Searcher, "_train_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        fastnas.search(**kw, out_dir=str(crashed))
    monkeypatch.setattr(Searcher, "_train_epoch", original)
    resumed = fastnas.search(**kw, out_dir=str(crashed), resume=True)

    _assert_resumed_equals_uninterrupted(resumed, full, crashed)


def _assert_resumed_equals_uninterrupted(resumed, full, out) -> None:
    """Bit-identical architecture parameters and arch, the same history (times aside), and every epoch
    logged once in ``out``'s metrics.jsonl."""
    for name, p in full.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], p), name
    assert resumed.arch == full.arch
    strip = ("epoch_time_s",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in strip} for r in full.history]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, len(full.history) + 1))


def test_nb201_table_reports_the_found_arch(tmp_path):
    table = tmp_path / "table.csv"
    rows = ["idx,arch,cifar10_test,cifar100_test"]
    for i, arch in enumerate(all_archs()):
        rows.append(f"{i},{arch_to_str(arch)},{i / 1000:.3f},{i / 2000:.4f}")
    table.write_text("\n".join(rows) + "\n")
    result = fastnas.search(**dict(TINY_NB201, epochs=1), out_dir=str(tmp_path / "r"), nb201_table=str(table))
    idx = [arch_to_str(a) for a in all_archs()].index(result.arch)
    assert result.table_accuracy["cifar10_test"] == pytest.approx(idx / 1000, abs=1e-9)
    assert result.history[0]["table_cifar10_test"] == pytest.approx(
        [arch_to_str(a) for a in all_archs()].index(result.history[0]["genotype"]) / 1000, abs=1e-9)


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real CIFAR-10 sample not available at {SAMPLE}")
def test_two_epoch_search_on_real_cifar10_lowers_the_training_loss(tmp_path):
    result = fastnas.search(space="nb201", dataset="cifar10_sample", data=str(SHARED_DATA), batch_size=64,
                            epochs=2, warmup_epochs=0, init_channels=8, layers=1, partial_channels=2,
                            device="cpu", steps_per_epoch=12, out_dir=str(tmp_path / "r"), quiet=True)
    first, second = result.history
    assert second["train_loss"] < first["train_loss"]
    assert parse_arch(result.arch)


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------
def _cli_args(out, space="nb201", epochs=1, extra=()):
    layers = "1" if space == "nb201" else "3"
    return ["search", "--space", space, "--dataset", "synthetic", "--dataset-option", "n=128",
            "--dataset-option", "image_size=16", "--batch_size", "16", "--init_channels", "8", "--layers", layers,
            "--partial_channels", "2", "--epochs", str(epochs), "--warmup_epochs", "0", "--steps_per_epoch", "3",
            "--device", "cpu", "--out_dir", str(out), "--quiet", *extra]


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_cli_search_prints_the_architecture(tmp_path, capsys, space):
    assert cli_main(_cli_args(tmp_path / "r", space)) == 0
    out = capsys.readouterr().out.strip()
    if space == "nb201":
        assert arch_to_str(parse_arch(out)) == out
    else:
        assert repr(parse_genotype(out)) == out


def test_cli_bad_setting_exits_2(tmp_path, capsys):
    assert cli_main(_cli_args(tmp_path / "r", extra=["--batch_size", "1000"])) == 2
    assert "batch_size=1000 is larger than the data" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--checkpoint_every_s", "1e-6")], ids=["epoch-ends", "every-step"])
def test_cli_killed_run_resumes(tmp_path, extra):
    """A real SIGKILL in the middle of a run, then --resume: the run finishes with every epoch logged once
    (with a checkpoint after every step, the kill lands after a checkpoint taken inside an epoch)."""
    out = tmp_path / "r"
    args = [sys.executable, "-m", "fastnas"] + _cli_args(out, epochs=4, extra=["--steps_per_epoch", "6", *extra])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoint.pt").exists(), proc.stderr.read().decode()
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert parse_arch(done.stdout.strip())
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


@pytest.mark.parametrize("kw, kill_epoch", [
    (dict(TINY_NB201, method="pc-darts", epochs=3), 1),
    (dict(TINY_NB201, method="darts-2nd", partial_channels=1, epochs=3), 1),
    # 2 progressive stages over 4 epochs: killed in epoch 3, the first of the second stage
    (dict(TINY_DARTS, method="drnas", init_channels=12, partial_channels=None, epochs=4), 2)],
    ids=["pc-darts-nb201", "darts-2nd-nb201", "drnas-darts-stage-2"])
def test_a_run_killed_inside_an_epoch_resumes_from_the_step_it_reached(tmp_path, monkeypatch, kw, kill_epoch):
    """checkpoint_every_s tiny: a checkpoint after every step. Killed in step 3 of an epoch, the resumed
    run takes only the remaining steps and ends bit-identical to an uninterrupted one, every epoch
    logged once with its full sums."""
    kw = dict(kw, warmup_epochs=1, steps_per_epoch=4, checkpoint_every_s=1e-9)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    out = tmp_path / "killed"
    resumed, left, steps = search_killed_in_step_then_resumed(monkeypatch, 4 * kill_epoch + 3, out, **kw)
    assert left["epoch"] == kill_epoch and left["in_epoch"]["steps_done"] == 2
    assert steps == 2 + 4 * (kw["epochs"] - kill_epoch - 1)  # the rest of the epoch, then the others
    _assert_resumed_equals_uninterrupted(resumed, full, out)
    assert len(full.history) == kw["epochs"]
    assert "in_epoch" not in torch.load(out / "checkpoint.pt", weights_only=False)


def test_checkpoint_every_s_is_checked_and_may_change_on_resume(tmp_path):
    for bad, err in ((-1.0, ValueError), (float("nan"), ValueError), ("10", TypeError)):
        with pytest.raises(err, match="checkpoint_every_s"):
            fastnas.search(**dict(TINY_NB201, epochs=1), checkpoint_every_s=bad, out_dir=str(tmp_path / "bad"))
    out = str(tmp_path / "r")
    fastnas.search(**dict(TINY_NB201, epochs=1, checkpoint_every_s=0), out_dir=out)
    assert fastnas.search(**dict(TINY_NB201, epochs=1, checkpoint_every_s=5.0), out_dir=out, resume=True) is not None
