"""Datasets, splits, the on-device augmentation and the independent second-batch stream."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from itra_tune import data
from itra_tune.config import ConfigError, DataConfig
from itra_tune.data.images import read_idx


def test_split_is_seeded_disjoint_and_complete():
    tr, va = data.split_indices(100, 0.2, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    tr2, va2 = data.split_indices(100, 0.2, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, data.split_indices(100, 0.2, seed=4)[1])


def test_random_crop_takes_a_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = data.random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)


def test_digits_loads_with_validation_split():
    d = data.build(DataConfig(name="digits", batch_size=32, val_fraction=0.2), torch.device("cpu"), seed=0)
    assert d.num_classes == 10 and d.input_shape == (1, 8, 8)
    n_val = sum(y.shape[0] for _, y in d.val)
    n_test = sum(y.shape[0] for _, y in d.test)
    assert n_test == 1797 // 5 and d.num_train + n_val == 1797 - n_test
    step = next(iter(d.train))  # S1 and S2, ready for one forward pass
    assert step.m1 == step.ce_rows == 32 and step.paired
    assert step.x.shape == (64, 1, 8, 8) and step.x.dtype == torch.float32 and step.y.dtype == torch.int64


def test_second_batch_stream_is_independent_and_covers_the_training_set():
    cfg = DataConfig(name="synthetic", batch_size=50, subset=200, augment=False)
    d = data.build(cfg, torch.device("cpu"), seed=0)
    steps = list(d.train)  # one epoch: 4 steps, each S1 then S2
    x1 = torch.cat([s.x[:s.m1] for s in steps])
    x2 = torch.cat([s.x[s.m1:] for s in steps])
    assert x1.shape == x2.shape == (200, 1, 8, 8)
    # both are permutations of the training set, in different orders
    key = lambda t: sorted(map(tuple, t.view(200, -1)[:, :3].tolist()))
    assert key(x1) == key(x2)
    assert not torch.equal(x1, x2)


def test_stream_state_round_trip_resumes_the_same_batches():
    d = data.build(DataConfig(name="synthetic", batch_size=48, subset=200), torch.device("cpu"), seed=1)
    second = d.train.second
    next(second)
    state = d.state_dict()
    expected = [next(second)[1] for _ in range(6)]
    d.load_state_dict(state)
    assert all(torch.equal(next(second)[1], e) for e in expected)


def test_split_pairing_gives_double_batches_and_no_stream():
    d = data.build(DataConfig(name="synthetic", batch_size=32, pairing="split"), torch.device("cpu"), 0)
    step = next(iter(d.train))
    assert step.x.shape[0] == 64 and step.m1 == 32 and step.ce_rows == 64 and d.train.second is None
    d = data.build(DataConfig(name="synthetic", batch_size=32), torch.device("cpu"), 0, paired=False)
    step = next(iter(d.train))
    assert step.x.shape[0] == step.m1 == 32 and not step.paired and d.train.second is None


def test_fmnist_from_the_real_idx_files(real_data):
    root = real_data("fashion_mnist")
    d = data.build(DataConfig(name="fmnist", root=str(root), val_fraction=0.1, batch_size=128),
                   torch.device("cpu"), seed=0)
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.num_train == 54000
    assert sum(y.shape[0] for _, y in d.test) == 10000
    x = next(iter(d.train)).x
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9  # pixels in [0, 1]: the model normalizes them
    assert d.normalization == ((0.2860,), (0.3530,))


def test_idx_reader_on_a_written_file(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in arr.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize("name", ["fmnist", "kmnist", "cifar10", "cifar100", "stl10", "imagenet"])
def test_missing_dataset_names_folder_and_fix(name, tmp_path):
    with pytest.raises(data.DatasetMissing) as e:
        data.build(DataConfig(name=name, root=str(tmp_path)), torch.device("cpu"), 0)
    message = str(e.value)
    assert str(tmp_path) in message and "\n" not in message
    assert "data.root" in message


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist3d'.*cifar10"):
        data.build(DataConfig(name="mnist3d"), torch.device("cpu"), 0)


def test_batch_larger_than_training_set():
    with pytest.raises(ConfigError, match="exceeds"):
        data.build(DataConfig(name="synthetic", batch_size=500, subset=100), torch.device("cpu"), 0)


def test_a_failed_download_is_one_line_and_leaves_no_folder(tmp_path):
    import urllib.error

    from itra_tune.data.images import download

    base = tmp_path / "data" / "cifar10"

    def fetch():  # what torchvision does offline: make the folder, print, then fail
        base.mkdir(parents=True)
        print("Downloading https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    with pytest.raises(data.DatasetMissing) as e:
        download("cifar10", base, fetch, "cifar-10-batches-py/")
    message = str(e.value)
    assert "\n" not in message and "download failed (" in message and "cifar-10-batches-py/" in message
    assert not (tmp_path / "data").exists()
