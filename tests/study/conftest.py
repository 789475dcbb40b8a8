"""The study tests' shared inputs, written once per run."""

from __future__ import annotations

import pytest
from fixtures.study import save_tiny_model, write_blimp, write_corpus


@pytest.fixture(scope="package")
def data(tmp_path_factory):
    """A corpus (``corpus.txt``), a BLiMP directory (``blimp``) and a tiny llama (``llama``);
    tests read them and write elsewhere."""
    root = tmp_path_factory.mktemp("study_data")
    write_corpus(root)
    write_blimp(root / "blimp")
    save_tiny_model("llama", root / "llama")
    return root
