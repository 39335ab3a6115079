"""Model tests share two CPU cores with everything else: one torch thread; the real MiniLM is loaded once."""

import pytest
import torch

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "minilm: loads the real all-MiniLM-L6-v2 (a few seconds); installed with the test extras"
    )


@pytest.fixture(scope="session")
def minilm_runner():
    from fleetgrid.models.registry import load_runner

    return load_runner("minilm-l6-v2", threads=1)
