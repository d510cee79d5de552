import os

# before torch starts OpenMP: idle threads sleep instead of spinning (see path.sh)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import release_fill as _release_fill  # noqa: E402
from helpers import CLEARVOICE_DATA, make_train_valid, train_tiny_frcrn  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def clearvoice_data():
    """tests/data/clearvoice: parity references and state-dict manifests of the releases."""
    return CLEARVOICE_DATA


@pytest.fixture(scope="session")
def release_fill():
    """The deterministic weight fill of the parity references (tests/release_fill.py)."""
    return _release_fill


@pytest.fixture(scope="session")
def tiny_train_data(tmp_path_factory):
    """Data dirs ``train`` (12 pairs) and ``valid`` (5) of 0.6 s at 16 kHz (helpers.make_train_valid)."""
    return make_train_valid(tmp_path_factory.mktemp("tiny_train_data"))


@pytest.fixture(scope="session")
def trained_frcrn(tiny_train_data, tmp_path_factory):
    """THE trained experiment dir of the test suite: a tiny FRCRN_SE_16K trained 6 updates by
    se.bin.train on tiny_train_data, once per session. Tests that need "a trained exp dir"
    read it; a test that would change it works on a copy (shutil.copytree)."""
    return train_tiny_frcrn(tiny_train_data, tmp_path_factory.mktemp("trained_frcrn") / "exp")
