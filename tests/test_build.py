"""The build: the C++ extension is there and matches the running torch; `python -m fastnas.info` works.

A missing cpu extension is a FAILURE here, not a skip: a broken build must not pass CI quietly.
Set FASTNAS_ALLOW_NO_EXTENSION=1 to run the rest of the suite on a torch-only install.
"""
import os
import subprocess
import sys

import pytest
import torch

from fastnas import _ext


@pytest.mark.skipif(os.environ.get("FASTNAS_ALLOW_NO_EXTENSION") == "1", reason="FASTNAS_ALLOW_NO_EXTENSION=1")
def test_cpu_extension_is_built_against_the_running_torch():
    module, reason = _ext.load()
    assert module is not None, reason
    assert module.torch_version == torch.__version__
    if torch.version.cuda is None:  # a CPU build of torch can only give a CPU-only extension
        assert not module.cuda_built()


def test_info_reports_versions_and_backends(tmp_path):
    # cwd=tmp_path: `python -m` puts the working directory first on sys.path, and from a checkout that
    # would import the source tree instead of the installed package
    out = subprocess.run([sys.executable, "-m", "fastnas.info"], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert f"torch          {torch.__version__}" in out
    assert "cpu            float32" in out
    if _ext.extension() is not None:
        assert "cpu kernels  built" in out
        assert "uses cpu" in out


def test_missing_extension_points_at_an_installed_copy_that_has_it(tmp_path, monkeypatch):
    """`python -m fastnas ...` inside a checkout imports the checkout's fastnas/ (no compiled module
    after a non-editable install); the reason then names the installed copy that has the extension."""
    from importlib import metadata
    from pathlib import PurePosixPath

    installed = tmp_path / "site-packages" / "fastnas"
    installed.mkdir(parents=True)
    (installed / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")

    class FakeDist:
        metadata = {"Name": "fastnas"}
        files = [PurePosixPath("fastnas/__init__.py"), PurePosixPath("fastnas/_C.cpython-311-x86_64-linux-gnu.so")]

        def locate_file(self, f):
            return tmp_path / "site-packages" / str(f)

    monkeypatch.setattr(metadata, "distributions", lambda: [FakeDist()])
    hint = _ext._installed_elsewhere()
    assert str(installed) in hint and "`fastnas` command" in hint
    monkeypatch.setattr(metadata, "distributions", lambda: [])
    assert _ext._installed_elsewhere() == ""
