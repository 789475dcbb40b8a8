import pytest

from checkpoints.names import resolve_model
from dynamics.errors import UserInputError


@pytest.mark.parametrize("alias", ["pythia-70m", "pythia-1.4b-deduped", "pythia-12b", "pythia-160m-v0"])
def test_pythia_aliases_resolve_to_eleutherai(alias):
    ref = resolve_model(alias)
    assert ref.kind == "hub" and ref.location == f"EleutherAI/{alias}" and ref.is_pythia


def test_other_hub_ids_pass_through():
    ref = resolve_model("meta-llama/Llama-3.1-8B")
    assert (ref.kind, ref.location, ref.is_pythia) == ("hub", "meta-llama/Llama-3.1-8B", False)
    assert resolve_model("EleutherAI/pythia-410m").is_pythia


def test_local_directories_and_gguf(tmp_path):
    suite = tmp_path / "suite"
    (suite / "step0").mkdir(parents=True)
    (suite / "step1000").mkdir()
    assert resolve_model(str(suite)).kind == "local_suite"
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text("{}")
    assert resolve_model(str(single)).kind == "local_model"
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    ref = resolve_model(str(gguf))
    assert ref.kind == "gguf" and ref.location == str(gguf.resolve())


@pytest.mark.parametrize(
    "name, message",
    [
        ("pythia-7b", "unknown Pythia size '7b'"),
        ("gpt-two", "unknown model 'gpt-two'"),
        ("missing.gguf", "GGUF file 'missing.gguf' does not exist"),
        ("", "--model is empty"),
    ],
)
def test_bad_names_are_one_clear_line(name, message):
    with pytest.raises(UserInputError, match=message) as info:
        resolve_model(name)
    assert "\n" not in str(info.value)


def test_empty_directory_is_rejected(tmp_path):
    with pytest.raises(UserInputError, match="neither a checkpoint suite"):
        resolve_model(str(tmp_path))
