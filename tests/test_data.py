"""fastnas.data: dataset readers, checksummed download and safe extraction, on-device augmentation.

Nothing here touches the network: the CIFAR pickle format, the archive and the "server" (a file:// URL)
are all written by the tests in tmp_path.
"""
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fastnas.data as fd
from fastnas.data import datasets as ds_mod
from fastnas.data import (ChecksumError, DeviceLoader, ImageData, load_cifar, load_dataset, random_crop_flip,
                          read_cifar_batch, safe_extract, split_train)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = SHARED_DATA / "cifar10_sample.npz"


# ---------------------------------------------------------------------------------------------------
# A fake CIFAR in the real on-disk format
# ---------------------------------------------------------------------------------------------------
def _write_batch(path, rng, n, label_key="labels", num_classes=10, bytes_keys=False):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    d = {"batch_label": "fake", "data": data, label_key: labels, "filenames": [f"{i}.png" for i in range(n)]}
    if bytes_keys:  # what a Python 2 pickle read with encoding='bytes' looks like
        d = {k.encode(): v for k, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return data, labels


def make_fake_cifar10(root, n_per_batch=4, n_test=3, seed=0):
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns the raw arrays."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = [_write_batch(folder / f"data_batch_{i}", rng, n_per_batch, bytes_keys=(i == 2)) for i in range(1, 6)]
    test = _write_batch(folder / "test_batch", rng, n_test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return train, test


def make_tarball(src_root, dest, members=("cifar-10-batches-py",)):
    with tarfile.open(dest, "w:gz") as tar:
        for m in members:
            tar.add(Path(src_root) / m, arcname=m)
    return hashlib.md5(Path(dest).read_bytes()).hexdigest()


def point_cifar10_at(monkeypatch, url, md5):
    spec = ds_mod._CIFAR["cifar10"]
    monkeypatch.setitem(ds_mod._CIFAR, "cifar10", type(spec)(**{**spec.__dict__, "url": url, "md5": md5}))


def test_read_cifar_batch_is_nchw(tmp_path):
    data, labels = _write_batch(tmp_path / "b", np.random.default_rng(1), 5)
    x, y = read_cifar_batch(tmp_path / "b")
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == labels
    # A row stores 1024 red, then green, then blue values, each plane row-major.
    for i, c, r, col in [(0, 0, 0, 0), (1, 1, 5, 7), (4, 2, 31, 31), (3, 2, 10, 0)]:
        assert x[i, c, r, col] == data[i, c * 1024 + r * 32 + col]


def test_load_fake_cifar10(tmp_path):
    train, test = make_fake_cifar10(tmp_path)
    d = load_cifar("cifar10", tmp_path, "train")
    assert d.images.shape == (20, 3, 32, 32) and d.num_classes == 10
    assert d.labels.tolist() == sum((lab for _, lab in train), [])
    assert torch.equal(d.images.reshape(20, -1), torch.from_numpy(np.concatenate([x for x, _ in train])))
    assert d.mean == fd.CIFAR10_MEAN and d.std == fd.CIFAR10_STD and d.classes[3] == "class3"
    t = load_dataset("CIFAR-10", root=tmp_path, split="test")
    assert len(t) == 3 and t.labels.tolist() == test[1]


def test_a_folder_path_is_read_as_the_dataset_it_holds(tmp_path):
    """``load_dataset(folder)`` (and ``fastnas score --data folder``): the folder that holds
    cifar-10-batches-py/, or that folder itself; a missing path or a folder of something else is named."""
    make_fake_cifar10(tmp_path)
    want = load_cifar("cifar10", tmp_path, "train")
    for given in (tmp_path, str(tmp_path), tmp_path / "cifar-10-batches-py"):
        assert torch.equal(load_dataset(given).images, want.images), given
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="is a folder without a dataset fastnas reads"):
        load_dataset(tmp_path / "other")
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        load_dataset("cifar11")


def test_load_fake_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    _, labels = _write_batch(folder / "train", rng, 6, "fine_labels", 100)
    _write_batch(folder / "test", rng, 2, "fine_labels", 100)
    d = load_dataset("cifar100", root=tmp_path)
    assert d.num_classes == 100 and d.labels.tolist() == labels and d.mean == fd.CIFAR100_MEAN


def test_refuses_pickles_that_run_code(tmp_path):
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": io.BytesIO(b"x")}, f)  # any non-numpy global is refused
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_cifar_batch(tmp_path / "b")


def test_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_cifar("cifar10", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and "download=True" in msg
    with pytest.raises(ValueError, match="root"):
        load_cifar("cifar10", None)


# ---------------------------------------------------------------------------------------------------
# Download (file:// "server"), checksum, safe extraction
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def served_archive(tmp_path):
    src = tmp_path / "server"
    train, _ = make_fake_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = make_tarball(src, archive)
    return archive.as_uri(), md5, train


def test_download_verifies_and_extracts(tmp_path, monkeypatch, served_archive):
    url, md5, train = served_archive
    point_cifar10_at(monkeypatch, url, md5)
    root = tmp_path / "root"
    d = load_cifar("cifar10", root, download=True)
    assert d.labels.tolist() == sum((lab for _, lab in train), [])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # Second call: files present, no download needed even from a dead URL.
    point_cifar10_at(monkeypatch, (tmp_path / "gone.tar.gz").as_uri(), md5)
    assert len(load_cifar("cifar10", root, download=True)) == 20


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch, served_archive):
    url, _, _ = served_archive
    point_cifar10_at(monkeypatch, url, "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match="MD5 mismatch"):
        load_cifar("cifar10", root, download=True)
    assert list(root.iterdir()) == []  # no partial archive, no temp file, no folder


def test_offline_download_is_a_clear_file_not_found(tmp_path, monkeypatch):
    point_cifar10_at(monkeypatch, (tmp_path / "no-such-file.tar.gz").as_uri(), "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError, match="download from .* failed") as e:
        load_cifar("cifar10", root, download=True)
    assert "cifar-10-batches-py" in str(e.value)
    assert list(root.iterdir()) == []


def test_archive_placed_by_hand_is_unpacked_without_download(tmp_path, monkeypatch, served_archive):
    url, md5, _ = served_archive
    point_cifar10_at(monkeypatch, "http://unreachable.invalid/x.tar.gz", md5)
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(Path(url[len("file://"):]).read_bytes())
    assert len(load_cifar("cifar10", root, download=False)) == 20


def _tar_with(path, name, kind="file"):
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"abc"))
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))


@pytest.mark.parametrize("name,kind", [("../evil.txt", "file"), ("a/../../evil.txt", "file"),
                                       ("/tmp/fastnas-evil.txt", "file"), ("cifar-10-batches-py/link", "symlink")],
                         ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_tar_traversal_is_refused_before_writing(tmp_path, name, kind):
    archive = tmp_path / "bad.tar.gz"
    _tar_with(archive, name, kind)
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="refusing to extract"):
        safe_extract(archive, root)
    assert list(root.iterdir()) == []  # the valid member was not written either
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/fastnas-evil.txt").exists()


# ---------------------------------------------------------------------------------------------------
# npz, the real sample, user tensors, torch Datasets, synthetic
# ---------------------------------------------------------------------------------------------------
def test_npz_layouts_and_split(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "hwc.npz", x=x, y=y, split=np.array([0, 0, 0, 0, 1, 1], dtype=np.int8))
    np.savez(tmp_path / "chw.npz", x=x.transpose(0, 3, 1, 2))
    d = load_dataset(tmp_path / "hwc.npz", split="test")
    assert d.images.shape == (2, 3, 8, 8) and d.labels.tolist() == [1, 2] and d.num_classes == 3
    assert torch.equal(d.images, torch.from_numpy(x[4:].transpose(0, 3, 1, 2).copy()))
    u = load_dataset(str(tmp_path / "chw.npz"))
    assert u.labels is None and u.num_classes is None and torch.equal(u.images.permute(0, 2, 3, 1), torch.from_numpy(x))
    with pytest.raises(ValueError, match="no 'split'"):
        load_dataset(tmp_path / "chw.npz", split="test")


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"real CIFAR-10 sample not available at {SAMPLE}")
def test_real_cifar10_sample():
    tr = fd.load_cifar10_sample(SHARED_DATA, "train")
    te = load_dataset("cifar10_sample", root=SAMPLE, split="test")
    assert tr.images.shape == (4000, 3, 32, 32) and len(te) == 1000
    assert len(fd.load_cifar10_sample(SAMPLE, "all")) == 5000
    assert tr.num_classes == 10 and tr.classes[0] == "airplane" and tr.mean == fd.CIFAR10_MEAN
    assert tr.labels.min() == 0 and tr.labels.max() == 9
    raw = np.load(SAMPLE)
    first_train = np.flatnonzero(raw["split"] == 0)[0]
    assert torch.equal(tr.images[0], torch.from_numpy(raw["x"][first_train].transpose(2, 0, 1).copy()))
    # Real images: the sample's statistics are those of CIFAR-10 (the constants) to within 0.01.
    mean, std = fd.channel_stats(tr.images)
    assert np.allclose(mean, fd.CIFAR10_MEAN, atol=0.01) and np.allclose(std, fd.CIFAR10_STD, atol=0.01)


def test_user_tensors_and_torch_dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8, generator=g)
    y = torch.arange(10) % 4
    d = load_dataset((x, y))
    assert torch.equal(d.images, x) and d.num_classes == 4
    assert np.allclose(d.mean, (x.double() / 255).mean((0, 2, 3)).numpy())
    # ToTensor-style floats in [0, 1] (CHW items) and numpy HWC items materialise to the same images.
    tds = torch.utils.data.TensorDataset(x.float() / 255, y)
    assert torch.equal(load_dataset(tds).images, x)
    np_items = [(x[i].permute(1, 2, 0).numpy(), int(y[i])) for i in range(10)]
    assert torch.equal(fd.from_torch_dataset(np_items).images, x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_dataset(((x.float() - 128) / 64, y))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    assert load_dataset(d) is d


def test_synthetic_is_learnable_and_seeded():
    tr = load_dataset("synthetic", n=400, num_classes=8, seed=5)
    te = load_dataset("synthetic", split="test", n=200, num_classes=8, seed=5)
    assert tr.images.shape == (400, 3, 32, 32) and torch.equal(tr.labels.bincount(), torch.full((8,), 50))
    assert torch.equal(tr.images, load_dataset("synthetic", n=400, num_classes=8, seed=5).images)
    assert not torch.equal(tr.images[:200], te.images)
    # Nearest class-mean colour, fitted on train, classifies test: the signal is there.
    colour = lambda d: d.images.float().mean((2, 3))  # noqa: E731
    centres = torch.stack([colour(tr)[tr.labels == c].mean(0) for c in range(8)])
    pred = torch.cdist(colour(te), centres).argmin(1)
    assert (pred == te.labels).float().mean() > 0.95


# ---------------------------------------------------------------------------------------------------
# On-device augmentation
# ---------------------------------------------------------------------------------------------------
def naive_crop_flip(x, offsets, flips, p=4):
    out = []
    for b in range(x.shape[0]):
        padded = torch.nn.functional.pad(x[b], (p, p, p, p))
        i, j = offsets[b].tolist()
        crop = padded[:, i:i + x.shape[2], j:j + x.shape[3]]
        out.append(crop.flip(-1) if flips[b] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape,p", [((7, 3, 32, 32), 4), ((5, 1, 9, 13), 2), ((1, 3, 8, 8), 0)],
                         ids=["cifar", "odd", "b1-nopad"])
def test_random_crop_flip_matches_naive_loop(shape, p, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, generator=g).to(dtype)
    offsets = torch.randint(0, 2 * p + 1, (shape[0], 2), generator=g)
    offsets[0] = torch.tensor([0, 2 * p])  # the extreme windows
    flips = torch.rand(shape[0], generator=g) < 0.5
    got = random_crop_flip(x, offsets, flips, p)
    assert got.dtype == dtype and torch.equal(got, naive_crop_flip(x, offsets, flips, p))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(random_crop_flip(x_cl, offsets, flips, p), got)


def _images(n=40, hw=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, hw, hw), dtype=torch.uint8, generator=g), torch.arange(n) % 10


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _normalise(x):
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_loader_batches_are_recorded_crops_of_the_indexed_images():
    x, y = _images()
    loader = DeviceLoader(x, y, 16, MEAN, STD, seed=3)
    for xb, yb in loader:
        idx, off, flip = loader.last_indices, loader.last_offsets, loader.last_flips
        assert torch.equal(yb, y[idx])
        assert torch.allclose(xb, _normalise(naive_crop_flip(x[idx], off, flip)), atol=1e-6)
        assert off.min() >= 0 and off.max() <= 8


def test_flip_and_offset_distributions():
    x, y = _images(n=500, hw=8)
    loader = DeviceLoader(x, y, 500, MEAN, STD, seed=0, infinite=True)
    flips, offs = [], []
    for _ in range(20):
        next(loader)
        flips.append(loader.last_flips)
        offs.append(loader.last_offsets)
    flips, offs = torch.cat(flips).float(), torch.cat(offs)
    assert abs(flips.mean().item() - 0.5) < 0.02  # 10,000 draws: 5 sigma is 0.025
    counts = offs.flatten().bincount(minlength=9)
    assert counts.numel() == 9 and (counts.float() / counts.sum() - 1 / 9).abs().max() < 0.02


def test_normalisation_without_augmentation():
    x, y = _images(n=64)
    loader = DeviceLoader(x, y, 16, MEAN, STD, augment=False, shuffle=False)
    xb = torch.cat([b for b, _ in loader])
    assert torch.allclose(xb, _normalise(x), atol=1e-6)
    # With statistics computed from the images, the normalised set has mean 0 and std 1 per channel.
    auto = torch.cat([b for b, _ in DeviceLoader(x, y, 16, augment=False)])
    assert torch.allclose(auto.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(auto.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_seed_determinism():
    x, y = _images()
    run = lambda seed: [b for b, _ in DeviceLoader(x, y, 8, MEAN, STD, seed=seed)]  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_epoch_passes_cover_the_data_once_and_reshuffle():
    x, y = _images(n=40)
    loader = DeviceLoader(x, y, 8, MEAN, STD, seed=0)
    assert len(loader) == 5
    p1 = torch.cat([(loader.last_indices) for _ in loader])
    p2 = torch.cat([(loader.last_indices) for _ in loader])
    assert sorted(p1.tolist()) == list(range(40)) and sorted(p2.tolist()) == list(range(40))
    assert not torch.equal(p1, p2) and loader.epoch == 2
    tail = DeviceLoader(x, y, 16, MEAN, STD, drop_last=False, shuffle=False)
    assert [b.shape[0] for b, _ in tail] == [16, 16, 8] and len(tail) == 3


def _take(loader, k, it=None):
    """k batches the way a training loop draws them: continue ``it``, then start new passes."""
    out, it = [], (iter(loader) if it is None else it)
    while len(out) < k:
        try:
            out.append(next(it))
        except StopIteration:
            it = iter(loader)
    return out, it


@pytest.mark.parametrize("infinite", [False, True], ids=["epoch", "infinite"])
@pytest.mark.parametrize("cut", [2, 5, 7], ids=["mid-pass", "pass-end", "second-pass"])
def test_state_dict_resume_gives_the_same_batches(infinite, cut):
    x, y = _images(n=40)  # 5 batches of 8 per pass
    ref = DeviceLoader(x, y, 8, MEAN, STD, seed=11, infinite=infinite)
    _, it = _take(ref, cut)
    state = ref.state_dict()
    expected, _ = _take(ref, 7, it)
    resumed = DeviceLoader(x, y, 8, MEAN, STD, seed=999, infinite=infinite)
    resumed.load_state_dict(state)
    got, _ = _take(resumed, 7)
    assert len(got) == len(expected) == 7
    for (gx, gy), (ex, ey) in zip(got, expected):
        assert torch.equal(gx, ex) and torch.equal(gy, ey)
    assert resumed.epoch == ref.epoch
    with pytest.raises(ValueError, match="batches of"):
        DeviceLoader(x, y, 4, MEAN, STD).load_state_dict(state)


def test_state_taken_after_a_full_pass_resumes_into_a_full_pass():
    # A checkpoint written inside the loop at the last step of an epoch must not resume into an empty
    # remainder of that epoch.
    x, y = _images(n=40)
    ref = DeviceLoader(x, y, 8, MEAN, STD, seed=4)
    for step, _ in enumerate(ref):
        if step == len(ref) - 1:
            state = ref.state_dict()
    resumed = DeviceLoader(x, y, 8, MEAN, STD, seed=0)
    resumed.load_state_dict(state)
    got, expected = list(resumed), list(ref)
    assert len(got) == len(expected) == 5 and all(torch.equal(g[0], e[0]) for g, e in zip(got, expected))


def test_infinite_crosses_pass_boundaries():
    x, y = _images(n=10)
    loader = DeviceLoader(x, y, 4, MEAN, STD, seed=0, infinite=True)  # 2 full batches per pass
    assert iter(loader) is loader
    seen = []
    for _ in range(6):
        next(loader)
        seen.append(loader.last_indices.tolist())
    assert loader.epoch == 3
    passes = [seen[i] + seen[i + 1] for i in (0, 2, 4)]
    assert all(len(set(p)) == 8 for p in passes)  # no repeat within a pass
    assert len({tuple(p) for p in passes}) == 3  # reshuffled every pass
    with pytest.raises(TypeError, match="infinite=True"):
        next(DeviceLoader(x, y, 4, MEAN, STD))


def test_batch_larger_than_data_is_a_clear_error():
    x, y = _images(n=10)
    with pytest.raises(ValueError, match=r"batch_size=16 is larger than the dataset \(10 images\)"):
        DeviceLoader(x, y, 16, MEAN, STD)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(x, y, 16, MEAN, STD, drop_last=False, infinite=True)
    assert len(list(DeviceLoader(x, y, 16, MEAN, STD, drop_last=False))) == 1


def test_dtype_channels_last_and_unlabelled():
    x, _ = _images(n=16)
    loader = DeviceLoader(x, None, 8, MEAN, STD, dtype=torch.bfloat16, channels_last=True, seed=0)
    xb, yb = next(iter(loader))
    assert yb is None and xb.dtype == torch.bfloat16 and xb.is_contiguous(memory_format=torch.channels_last)
    ref = _normalise(naive_crop_flip(x[loader.last_indices], loader.last_offsets, loader.last_flips))
    assert torch.allclose(xb.float(), ref, atol=3e-2, rtol=1e-2)


def test_split_train_follows_darts():
    x, y = _images(n=11)
    (xw, yw), (xa, ya) = split_train(x, y, 0.5)
    assert torch.equal(xw, x[:5]) and torch.equal(ya, y[5:])  # floor(0.5 * 11) = 5, no shuffle
    data = ImageData(x, y, 10, MEAN, STD, name="d")
    w, a = split_train(data, train_portion=0.7)
    assert len(w) == 7 and len(a) == 4 and w.mean == MEAN and torch.equal(a.images, x[7:])
    (sw, _), (sa, _) = split_train(x, y, 0.5, shuffle=True, seed=0)
    assert sorted(torch.cat([sw, sa]).flatten().tolist()) == sorted(x.flatten().tolist())
    with pytest.raises(ValueError, match="empty"):
        split_train(x[:1], y[:1])


@pytest.mark.gpu
def test_device_loader_on_cuda():
    x, y = _images(n=64)
    loader = DeviceLoader(x, y, 16, MEAN, STD, seed=0, device="cuda")
    a = [(b.cpu(), l.cpu()) for b, l in loader]
    idx, off, flip = (t.cpu() for t in (loader.last_indices, loader.last_offsets, loader.last_flips))
    assert torch.allclose(a[-1][0], _normalise(naive_crop_flip(x[idx], off, flip)), atol=1e-5)
    b = [(b.cpu(), l.cpu()) for b, l in DeviceLoader(x, y, 16, MEAN, STD, seed=0, device="cuda")]
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b))
    state = loader.state_dict()
    nxt = next(iter(loader))[0].cpu()
    fresh = DeviceLoader(x, y, 16, MEAN, STD, seed=5, device="cuda")
    fresh.load_state_dict(state)
    assert torch.equal(next(iter(fresh))[0].cpu(), nxt)
