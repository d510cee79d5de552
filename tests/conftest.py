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


# Markers (declared in pytest.ini): `pytest -m "not slow"` is the quick loop; the default run
# selects everything. Chosen from `pytest --durations=30` on 2 shared CPU cores: a test over ~20 s
# is slow. Whole files: the recipes end to end and the Slurm cluster.
SLOW_FILES = {"test_mini_recipe.py", "test_voicebank_recipe.py", "test_dns_recipe.py", "test_own_data_recipe.py",
              "test_slurm.py"}
SLURM_FILES = {"test_slurm.py"}
SLOW_TESTS = {  # file::test (every parametrisation) or file::test[parameters]
    "test_trainer.py::test_resume_after_kill_is_exact",
    "test_trainer.py::test_average_best_checkpoints",
    "test_trainer.py::test_init_prints_key_table_and_refuses_mostly_empty",
    "test_trainer.py::test_torchrun_two_processes_validation_equals_single",
    "test_trainer.py::test_resume_refuses_other_network_size",
    "test_trainer.py::test_max_steps_at_an_epoch_boundary_closes_the_epoch",
    "test_mixed_precision_training.py::test_bf16_two_epochs_with_validation_examples_then_enhance[FRCRN_SE_16K]",
    "test_mixed_precision_training.py::test_bf16_two_epochs_with_validation_examples_then_enhance[MossFormerGAN_SE_16K]",
    "test_training_faults.py::test_a_crashed_process_ends_the_job_with_an_error",
    "test_mossformer_gan.py::test_generator_forward_float64_parity",
    "test_mossformer_gan.py::test_clearvoice_decode_parity",
    "test_gpu_readiness.py::test_gan_two_processes_one_with_all_pesq_failed",
    "test_enhance_cli.py::test_release_checkpoint_compat_decode_reproduces_reference[MossFormerGAN_SE_16K]",
    "test_score_cli.py::test_cli_agrees_with_direct_calls",
    "test_score_cli.py::test_score_sh_runs_jobs_and_merges",
    "test_frcrn.py::test_forward_parity_float64",
    "test_bad_input.py::test_train_sh_refused_resume_leaves_exp_dir_and_log",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        file = item.path.name
        if file in SLOW_FILES or {f"{file}::{item.originalname}", f"{file}::{item.name}"} & SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if file in SLURM_FILES:
            item.add_marker(pytest.mark.slurm)
