"""fnnlab's iris is scikit-learn's: the same file, and load_iris2 the same bits as the
tutorial's load_iris + preprocessing.normalize, for every choice of features."""

from __future__ import annotations

import itertools
import subprocess
import sys
from importlib import resources

import pytest
import torch
from sklearn import datasets, preprocessing

from fnnlab.data import load_iris2

FEATURE_CHOICES = [list(c) for r in (1, 2, 3, 4) for c in itertools.combinations(range(4), r)] + [
    [1, 0],
    [3, 1, 2],
]


def sklearn_iris2(features, normalize, dtype):
    """The tutorial's way, as fnnlab did it before it read the file itself."""
    iris = datasets.load_iris()
    x = iris.data[:, list(features)]
    if normalize:
        x = preprocessing.normalize(x)
    keep = int((iris.target < 2).sum())
    X = torch.tensor(x[:keep], dtype=torch.float32).to(dtype)
    y = torch.tensor(iris.target[:keep], dtype=torch.float32).reshape(-1, 1).to(dtype)
    return X, y


def test_the_file_is_scikit_learns() -> None:
    ours = resources.files("fnnlab").joinpath("iris.csv").read_bytes()
    theirs = resources.files("sklearn.datasets.data").joinpath("iris.csv").read_bytes()
    assert ours == theirs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("features", FEATURE_CHOICES, ids=str)
def test_same_bits_as_scikit_learn(features, normalize, dtype) -> None:
    X, y = load_iris2(features, normalize, dtype)
    X_ref, y_ref = sklearn_iris2(features, normalize, dtype)
    assert X.dtype == X_ref.dtype == dtype and X.shape == X_ref.shape == (100, len(features))
    assert X.numpy().tobytes() == X_ref.numpy().tobytes()
    assert X.stride() == X_ref.stride()  # a layout can change a matmul's sum order
    assert torch.equal(y, y_ref)


def test_loading_does_not_import_scikit_learn() -> None:
    code = (
        "import sys; from fnnlab.data import load_iris2; load_iris2(); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
