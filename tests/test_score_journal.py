"""The score journal: a killed ``fastnas.score`` / ``fastnas score`` run resumes where it stopped."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastnas.cli import main
from fastnas.proxies import score
from fastnas.proxies.journal import ScoreJournal
from fastnas.proxies.registry import PROXIES, register_proxy

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
ONE_CONV = "|nor_conv_1x1~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"
POOLS = "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|"
ARCHS = [BEST, ALL_SKIP, ONE_CONV, POOLS]
PROXY, OTHER = "test_journal_init", "test_journal_params"

calls = {"n": 0, "interrupt_at": None}


def _init_and_data(model, images, labels=None):
    """Depends on the initialisation and the images, so a resumed row must be the one computed before."""
    calls["n"] += 1
    if calls["interrupt_at"] is not None and calls["n"] >= calls["interrupt_at"]:
        raise KeyboardInterrupt
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        return float(conv.weight.abs().sum()) + float(model(images).mean())


def _params(model, images, labels=None):
    calls["n"] += 1
    return float(sum(p.numel() for p in model.parameters()))


if PROXY not in PROXIES:
    register_proxy(PROXY, higher_is_better=True, uses_labels=False, batch_size=4)(_init_and_data)
if OTHER not in PROXIES:
    register_proxy(OTHER, higher_is_better=True, uses_labels=False, batch_size=4)(_params)


@pytest.fixture(autouse=True)
def _reset_calls():
    calls.update(n=0, interrupt_at=None)
    yield
    calls.update(n=0, interrupt_at=None)


def _score(path=None, archs=ARCHS, **kw):
    return score(archs, [PROXY, OTHER], device="cpu", seed=3, checkpoint=path, **kw)


def _interrupted_run(path, at):
    """A run killed (KeyboardInterrupt) at the ``at``-th call of the journal proxy."""
    calls.update(n=0, interrupt_at=at)
    with pytest.raises(KeyboardInterrupt):
        _score(path)
    calls.update(n=0, interrupt_at=None)


def _records(path):
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_a_killed_run_resumes_with_only_the_missing_scores_and_the_same_table(tmp_path):
    whole = _score()
    path = tmp_path / "scores.journal.jsonl"
    _interrupted_run(path, at=3)                       # PROXY scored archs 0 and 1, then the kill
    header, recs = _records(path)
    assert header["archs"] == ARCHS and header["fingerprint"]["seed"] == 3
    assert [(r["i"], r["proxy"]) for r in recs] == [(0, PROXY), (1, PROXY)]
    resumed = _score(path)
    assert calls["n"] == 2 * len(ARCHS) - 2            # the 2 journalled scores are not recomputed
    for p in (PROXY, OTHER):
        np.testing.assert_array_equal(resumed[p], whole[p])
    assert len(_records(path)[1]) == 2 * len(ARCHS)
    assert resumed.seconds[PROXY] > 0 and resumed.seconds[OTHER] > 0


def test_a_finished_journal_replays_without_scoring(tmp_path):
    path = tmp_path / "j.jsonl"
    first = _score(path)
    calls["n"] = 0
    again = _score(path)
    assert calls["n"] == 0
    np.testing.assert_array_equal(again[PROXY], first[PROXY])
    assert again.seconds == pytest.approx(first.seconds)   # the recorded time, not the replay's


def test_a_torn_last_record_is_dropped_and_the_file_repaired(tmp_path):
    whole = _score()
    path = tmp_path / "j.jsonl"
    _interrupted_run(path, at=4)
    with open(path, "a") as f:
        f.write('{"i": 3, "arch": "|nor_co')             # a kill in the middle of a write
    resumed = _score(path)
    np.testing.assert_array_equal(resumed[PROXY], whole[PROXY])
    header, recs = _records(path)                      # every line parses: the torn one was cut first
    assert sorted((r["i"], r["proxy"]) for r in recs) == sorted((i, p) for i in range(4) for p in (PROXY, OTHER))


def test_a_damaged_line_inside_the_journal_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    _score(path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"score"', '"scroe"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 3.*damaged"):
        _score(path)


@pytest.mark.parametrize("change, named", [
    (dict(seed=4), "seed"),
    (dict(batch_size=2), "batch_size"),
    (dict(settings={PROXY: {}, OTHER: {}}, proxies=[OTHER, PROXY]), "proxies"),
    (dict(data=(torch.rand(8, 3, 32, 32), torch.arange(8) % 10)), "data"),
    (dict(network_options={"nb201_channels": 8}), "network_options"),
])
def test_a_journal_of_another_job_is_refused_with_the_difference_named(tmp_path, change, named):
    path = tmp_path / "j.jsonl"
    _score(path)
    before = path.read_bytes()
    kw = dict(device="cpu", seed=3, checkpoint=path)
    proxies = change.pop("proxies", [PROXY, OTHER])
    change.pop("settings", None)
    kw.update(change)
    with pytest.raises(ValueError, match=f"cannot resume the score journal .*{named}"):
        score(ARCHS, proxies, **kw)
    assert path.read_bytes() == before                 # the user's journal is left as it was


def test_a_record_with_a_non_finite_score_is_damage(tmp_path):
    path = tmp_path / "j.jsonl"
    _score(path)
    for bad in ("NaN", "Infinity", "1e999"):
        header, *lines = path.read_text().splitlines()
        rec = json.loads(lines[1])
        lines[1] = lines[1].replace(json.dumps(rec["score"]), bad)
        path.write_text("\n".join([header, *lines]) + "\n")
        with pytest.raises(ValueError, match="line 3.*damaged"):
            _score(path)
        _score(path.with_suffix(".new"))       # (the same job elsewhere still scores)
        path.unlink()
        _score(path)


def test_a_resume_at_another_cpu_thread_count_is_refused_by_name(tmp_path):
    """Scores move in the last bits with the thread count, so a bit-identical resume needs the same."""
    path = tmp_path / "j.jsonl"
    threads = torch.get_num_threads()
    _score(path)
    try:
        torch.set_num_threads(threads + 1)
        with pytest.raises(ValueError, match=f"cpu_threads: journal {threads}, now {threads + 1}"):
            _score(path)
    finally:
        torch.set_num_threads(threads)
    _score(path)


def test_other_archs_or_a_foreign_file_are_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    _score(path)
    with pytest.raises(ValueError, match="another list of architectures .4 archs in the journal, 3 now"):
        _score(path, archs=ARCHS[:3])
    with pytest.raises(ValueError, match="the same 4 archs in another order"):
        _score(path, archs=ARCHS[::-1])
    with pytest.raises(ValueError, match=r"arch 2: journal '\|skip_connect~0\|.*now '\|avg_pool"):
        _score(path, archs=[BEST, POOLS, ONE_CONV, ALL_SKIP][:2] + ARCHS[2:])
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes\n")
    with pytest.raises(ValueError, match="not a fastnas score journal"):
        _score(foreign)
    assert foreign.read_text() == "my notes\n"
    with pytest.raises(ValueError, match="is a folder"):
        _score(tmp_path)


def test_modules_cannot_be_journalled(tmp_path):
    from fastnas.nn.networks import NB201Network

    with pytest.raises(ValueError, match="nn.Module"):
        score([NB201Network(BEST)], [OTHER], device="cpu", checkpoint=tmp_path / "j.jsonl")
    assert not (tmp_path / "j.jsonl").exists()


def test_nothing_is_written_before_the_first_score_and_an_empty_journal_is_replaced(tmp_path):
    path = tmp_path / "sub" / "j.jsonl"
    j = ScoreJournal.open(path, {"proxies": ["a"]}, ["x", "y"])
    j.close()
    assert not path.exists()
    j = ScoreJournal.open(path, {"proxies": ["a"]}, ["x", "y"])
    j.record(1, "a", 0.5, 0.1)
    j.close()
    again = ScoreJournal.open(path, {"proxies": ["a"]}, ["x", "y"])
    assert again.done() == {(1, "a"): (0.5, 0.1)}
    again.close()
    assert not [p for p in path.parent.iterdir() if p.name != path.name]   # no temporary files left
    header_only = path.read_text().splitlines()[0] + "\n"
    path.write_text(header_only)                        # a journal with no score, of another job
    other = ScoreJournal.open(path, {"proxies": ["b"]}, ["z"])
    assert other.done() == {}
    other.record(0, "b", 2.0, 0.3)
    other.close()
    header, recs = _records(path)
    assert header["archs"] == ["z"] and [r["proxy"] for r in recs] == ["b"]


def test_two_jobs_on_one_journal_are_refused_before_either_loses_a_score(tmp_path):
    path, job = tmp_path / "j.jsonl", ({"proxies": ["a"]}, ["x", "y", "z"])
    # both start before the file exists: the second to write its header is refused
    first, second = ScoreJournal.open(path, *job), ScoreJournal.open(path, *job)
    first.record(0, "a", 1.0, 0.1)
    with pytest.raises(ValueError, match="was created by another job after this one looked"):
        second.record(1, "a", 2.0, 0.1)
    # a resume while the first still writes: refused by the lock, the file untouched
    before = path.read_bytes()
    third = ScoreJournal.open(path, *job)
    with pytest.raises(ValueError, match="is being written by another job that is still running"):
        third.record(1, "a", 2.0, 0.1)
    assert path.read_bytes() == before
    first.record(1, "a", 3.0, 0.1)
    first.close()
    # the third read the file before the first's last score: writing from that stale view would drop it
    with pytest.raises(ValueError, match="was written by another job after this one read it"):
        third.record(2, "a", 4.0, 0.1)
    fourth = ScoreJournal.open(path, *job)
    assert fourth.done() == {(0, "a"): (1.0, 0.1), (1, "a"): (3.0, 0.1)}
    fourth.record(2, "a", 4.0, 0.1)
    fourth.close()
    assert [r["score"] for r in _records(path)[1]] == [1.0, 3.0, 4.0]


def test_a_job_that_fails_before_scoring_leaves_no_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    with pytest.raises(TypeError, match="no setting"):
        score(ARCHS, [PROXY, OTHER], device="cpu", seed=3, checkpoint=path, settings={PROXY: {"x": 1}})
    assert not path.exists()
    np.testing.assert_array_equal(_score(path)[PROXY], _score()[PROXY])


def _cli(tmp_path, *extra):
    args = ["score", "--arch", BEST, "--arch", ALL_SKIP, "--arch", ONE_CONV, "--proxies", f"{PROXY},{OTHER}",
            "--seed", "3", "--device", "cpu", "--quiet", *extra]
    return main(args)


def test_cli_output_journal_resumes_and_is_removed_when_the_csv_is_written(tmp_path, capsys):
    assert _cli(tmp_path, "--output", str(tmp_path / "whole.csv")) == 0
    out = tmp_path / "scores.csv"
    journal = tmp_path / "scores.csv.journal.jsonl"
    calls.update(n=0, interrupt_at=2)
    assert _cli(tmp_path, "--output", str(out)) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(journal) in err and "rerun the same command" in err
    assert journal.exists() and not out.exists()
    calls.update(n=0, interrupt_at=None)
    assert main(["score", "--arch", BEST, "--arch", ALL_SKIP, "--arch", ONE_CONV, "--proxies", f"{PROXY},{OTHER}",
                 "--seed", "3", "--device", "cpu", "--output", str(out)]) == 0      # with the progress bar
    assert f"resuming from the score journal {journal}: 1 of 6 scores" in capsys.readouterr().err
    assert calls["n"] == 2 * 3 - 1
    assert out.read_text() == (tmp_path / "whole.csv").read_text()
    assert not journal.exists()


def test_cli_explicit_checkpoint_is_kept(tmp_path, capsys):
    journal = tmp_path / "mine.jsonl"
    assert _cli(tmp_path, "--checkpoint", str(journal)) == 0
    assert journal.exists() and len(_records(journal)[1]) == 6
    printed = capsys.readouterr().out
    assert main(["score", "--arch", BEST, "--arch", ALL_SKIP, "--arch", ONE_CONV, "--proxies", f"{PROXY},{OTHER}",
                 "--seed", "3", "--device", "cpu", "--checkpoint", str(journal)]) == 0
    assert calls["n"] == 6                              # all 6 from the first run: nothing scored again
    captured = capsys.readouterr()
    assert captured.out == printed                      # the CSV on stdout, untouched by the resume message
    assert "resuming from the score journal" in captured.err


def test_cli_refuses_a_journal_of_another_job_with_exit_2(tmp_path, capsys):
    journal = tmp_path / "mine.jsonl"
    assert _cli(tmp_path, "--checkpoint", str(journal)) == 0
    assert main(["score", "--arch", BEST, "--proxies", OTHER, "--device", "cpu", "--quiet",
                 "--checkpoint", str(journal)]) == 2
    assert "cannot resume the score journal" in capsys.readouterr().err


def test_cli_a_journal_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    rc = main(["score", "--arch", ARCHS[0], "--proxies", "params", "--device", "cpu", "--checkpoint",
                   str(tmp_path / "afile" / "j.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "is a file, not a folder" in err and "another job" not in err, err
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_sigkilled_cli_run_resumes_to_the_uninterrupted_table(tmp_path):
    """The real failure: the process killed (SIGKILL, no cleanup) while it scores."""
    import signal
    import subprocess
    import sys
    import time

    archs = tmp_path / "archs.txt"
    archs.write_text("\n".join(ARCHS * 3) + "\n")       # 12 rows, so the kill lands mid-run
    cmd = [sys.executable, "-m", "fastnas", "score", "--archs-file", str(archs), "--proxies", "nwot,params",
           "--device", "cpu", "--quiet", "--batch-size", "8"]
    whole, out = tmp_path / "whole.csv", tmp_path / "scores.csv"
    journal = tmp_path / "scores.csv.journal.jsonl"
    subprocess.run(cmd + ["--output", str(whole)], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + ["--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:   # header + 3 scores
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    kept = len(_records(journal)[1])
    assert 3 <= kept < 24
    subprocess.run(cmd + ["--output", str(out)], check=True, capture_output=True)
    assert out.read_text() == whole.read_text() and not journal.exists()
