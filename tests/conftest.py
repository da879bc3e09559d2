"""Suite-wide fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_global_generators():
    """Every test starts from the same global random state.

    Under ``pytest -n 2`` which tests share a worker, and in what order, changes from run to run; without this a test
    that draws from the global generators (weight init, ``torch.randn``) sees different numbers each run.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
