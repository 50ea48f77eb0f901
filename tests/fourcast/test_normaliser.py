import numpy as np
import pytest
import torch

from fourcast.errors import NormaliserError
from fourcast.normaliser import Normaliser


def test_normalise_then_denormalise_is_the_identity():
    mean = np.array([54000.0, 10.0, -0.5])
    std = np.array([900.0, 8.0, 6.5])
    normaliser = Normaliser(mean, std)
    x = (
        torch.randn(5, 3, 8, 16, dtype=torch.float32) * torch.tensor(std, dtype=torch.float32)[:, None, None]
        + torch.tensor(mean, dtype=torch.float32)[:, None, None]
    )
    torch.testing.assert_close(normaliser.denormalise(normaliser.normalise(x)), x, rtol=1e-6, atol=1e-2)
    z = normaliser.normalise(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.15, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(3), atol=0.1, rtol=0)


def test_normaliser_refuses_bad_statistics():
    with pytest.raises(NormaliserError, match="std must be positive"):
        Normaliser([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(NormaliserError, match="equal length"):
        Normaliser([0.0, 1.0], [1.0])
