"""The tutorial's data set: the first two iris classes as tensors.

Iris ships inside scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import torch
from sklearn import datasets, preprocessing


def load_iris2(
    features: list[int] | tuple[int, ...] = (0, 1),
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return X (100 x len(features)) and y (100 x 1) for iris classes 0 and 1.

    As in the tutorial, each row is L2-normalised over the chosen features (not
    over all four), and the first 100 rows are kept: those are classes 0 and 1.
    """
    iris = datasets.load_iris()
    x = iris.data[:, list(features)]
    if normalize:
        x = preprocessing.normalize(x)
    keep = int((iris.target < 2).sum())
    # float32 first, as the tutorial did, so float64 runs start from the same numbers
    X = torch.tensor(x[:keep], dtype=torch.float32).to(dtype)
    y = torch.tensor(iris.target[:keep], dtype=torch.float32).reshape(-1, 1).to(dtype)
    return X, y
