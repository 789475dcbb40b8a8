"""Test-wide settings: everything runs offline, on CPU, with real data when present."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _fresh_hub_status():
    """Each test is a fresh run for the Hub (as ``run_scan`` and the study's loading begin with
    ``hub_status.forget()``): a test that makes the Hub unreachable, or spends the run's retry
    budget, must not make the next test's Hub unreachable too."""
    from checkpoints import hub_status

    hub_status.forget()
    yield
    hub_status.forget()


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory) -> Path:
    """A tiny built-in toy suite (steps 0, 1, 2, 4, 8) with tokenizer and heldout.txt."""
    from fixtures.toy import build_tiny_suite

    return build_tiny_suite(tmp_path_factory.mktemp("suites") / "tiny")


# protocol strict: the scan tests pin the behaviour from before --protocol (tests/test_protocol.py checks paper)
FAST_SCAN = dict(
    wd_tokens=512, ppl_tokens=64, tse_per_case=2, cohort_percent=5.0, blimp_per_paradigm=0, protocol="strict"
)


@pytest.fixture(scope="session")
def full_cube(tiny_suite, tmp_path_factory) -> Path:
    """A scan of every step of the tiny suite (with the stepwise condition)."""
    from dynamics.scan.config import ScanConfig
    from dynamics.scan.driver import run_scan

    out = tmp_path_factory.mktemp("cubes") / "full.zarr"
    summary = run_scan(ScanConfig(model=str(tiny_suite), out=str(out), steps="all", stepwise=True, **FAST_SCAN))
    assert summary.done == [0, 1, 2, 4, 8] and not summary.failed
    return out


@pytest.fixture(scope="session")
def study_data(tmp_path_factory) -> Path:
    """A corpus (``corpus.txt``), a BLiMP directory (``blimp``) and a tiny llama (``llama``)
    for the study tests; they read them and write elsewhere."""
    from fixtures.study import save_tiny_model, write_blimp, write_corpus

    root = tmp_path_factory.mktemp("study_data")
    write_corpus(root)
    write_blimp(root / "blimp")
    save_tiny_model("llama", root / "llama")
    return root


@pytest.fixture(scope="module")
def pyplot():
    """matplotlib's pyplot and seaborn as the figure commands load them (Agg), figures closed after the module."""
    from dynamics.report.scan_figures import _pyplot

    plt, sns = _pyplot()
    yield plt, sns
    plt.close("all")
