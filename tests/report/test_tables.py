"""The report's protocol line names where the WD text came from."""

from dynamics.config.parts import ScoringOptions
from dynamics.config.protocol import resolve_protocol
from dynamics.report.tables import protocol_line

RECORD = resolve_protocol(ScoringOptions()).record()  # the paper protocol, as a cube stores it


def test_a_local_wd_file_is_named_not_called_wikitext():
    line = protocol_line({"protocol": RECORD, "wd_corpus": {"source": "/data/test.txt", "split": "train"}})
    assert line.endswith("WD text /data/test.txt") and "WikiText" not in line


def test_wikitext_is_named_with_its_split_and_joiner():
    line = protocol_line({"protocol": RECORD, "corpus": {"source": "wikitext2", "split": "train"}})
    assert line.endswith("WD text WikiText-2 train split joined by ' '")
