"""The tutorial's data set: the first two iris classes as tensors.

iris.csv beside this module is scikit-learn's copy of the iris data, byte for byte (the
tutorial loads it with sklearn.datasets.load_iris); reading it here spares each process
that trains scikit-learn's import (README, Speed). tests/test_data.py checks the result is
bitwise scikit-learn's for every choice of features.
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np
import torch


def _iris() -> tuple[np.ndarray, np.ndarray]:
    """Features (150 x 4, float64) and targets (150, int), parsed as load_iris parses them."""
    with resources.files("fnnlab").joinpath("iris.csv").open(newline="") as f:
        rows = csv.reader(f)
        n, n_features = (int(v) for v in next(rows)[:2])
        data = np.empty((n, n_features))
        target = np.empty((n,), dtype=int)
        for i, row in enumerate(rows):
            data[i] = np.asarray(row[:-1], dtype=np.float64)
            target[i] = np.asarray(row[-1], dtype=int)
    return data, target


def _l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    """sklearn.preprocessing.normalize(x) for a dense array, the same operations in the same
    order (einsum row norms, near-zero norms left at 1), so the same bits."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    return x / norms[:, None]


def load_iris2(
    features: list[int] | tuple[int, ...] = (0, 1),
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return X (100 x len(features)) and y (100 x 1) for iris classes 0 and 1.

    As in the tutorial, each row is L2-normalised over the chosen features (not
    over all four), and the first 100 rows are kept: those are classes 0 and 1.
    """
    data, target = _iris()
    x = data[:, list(features)]
    if normalize:
        x = _l2_normalize_rows(x)
    keep = int((target < 2).sum())
    # float32 first, as the tutorial did, so float64 runs start from the same numbers
    X = torch.tensor(x[:keep], dtype=torch.float32).to(dtype)
    y = torch.tensor(target[:keep], dtype=torch.float32).reshape(-1, 1).to(dtype)
    return X, y
