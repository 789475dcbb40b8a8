import pytest

from checkpoints.steps import LOG_STEPS, PYTHIA_STEPS, parse_steps
from dynamics.errors import UserInputError


def test_range_stop_is_inclusive():
    steps = parse_steps("0:143000:1000")
    assert len(steps) == 144
    assert steps[0] == 0 and steps[-1] == 143000 and steps[1] == 1000


def test_pythia_schedule_has_154_revisions():
    steps = parse_steps("pythia")
    assert len(steps) == 154
    assert steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert steps[-2:] == [142000, 143000]
    assert tuple(steps) == PYTHIA_STEPS


def test_log_schedule():
    assert parse_steps("log") == [
        0,
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        64000,
        128000,
        143000,
    ]
    assert len(LOG_STEPS) == 20


def test_lists_unions_sorted_and_deduplicated():
    assert parse_steps("1000,0,512,1000") == [0, 512, 1000]
    assert parse_steps("0:2000:1000, 512, final") == [0, 512, 1000, 2000, 143000]
    assert parse_steps("7") == [7]


def test_final_and_all_follow_the_source():
    suite = [0, 10, 20, 40]
    assert parse_steps("final", available=suite) == [40]
    assert parse_steps("all", available=suite) == suite
    assert parse_steps("final") == [143000]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0:abc", "cannot parse step spec '0:abc'"),
        ("-5", "negative"),
        ("0:-10:5", "negative"),
        ("0:1000:0", "STEP 0"),
        ("2000:1000:10", "STOP 1000 < START 2000"),
        ("", "empty step spec"),
        ("0,,5", "empty term"),
        ("latest", "cannot parse step spec 'latest'"),
    ],
)
def test_malformed_specs_name_the_bad_value(spec, message):
    with pytest.raises(UserInputError, match=message) as info:
        parse_steps(spec)
    assert "\n" not in str(info.value)


def test_step_without_revision_names_the_nearest():
    with pytest.raises(
        UserInputError, match=r"step 1500 has no checkpoint for EleutherAI/pythia-70m; nearest available: 1000, 2000"
    ):
        parse_steps("0,1500", available=PYTHIA_STEPS, source="EleutherAI/pythia-70m")
    with pytest.raises(UserInputError, match=r"nearest available: 143000$"):
        parse_steps("150000", available=PYTHIA_STEPS)
    with pytest.raises(UserInputError, match=r"step 3 has no checkpoint; nearest available: 2, 4"):
        parse_steps("3", available=PYTHIA_STEPS)


@pytest.mark.parametrize("spec", ["²", "1²", "٣", "0:²:1", "١:5:1"])
def test_non_ascii_digits_are_not_steps(spec):
    # "²".isdigit() is True but int("²") fails; "٣" is a decimal digit int() would take: neither is a step spec
    with pytest.raises(UserInputError, match=f"cannot parse step spec '{spec}': expected START:STOP:STEP"):
        parse_steps(spec)


def test_a_step_beyond_int64_is_refused_whatever_the_source():
    with pytest.raises(
        UserInputError, match="99999999999999999999999 is too large; steps are integers from 0 to 9223372036854775807"
    ):
        parse_steps("99999999999999999999999")  # a Hub id without step branches: no list to check against
    assert parse_steps(str(2**63 - 1)) == [2**63 - 1]


def test_a_range_of_too_many_steps_is_refused_before_it_is_built():
    with pytest.raises(UserInputError, match="'0:1000000000000:1' selects 1000000000001 steps, more than 1000000"):
        parse_steps("0:1000000000000:1")
    assert len(parse_steps("0:999999:1")) == 1_000_000  # the limit itself is allowed
    with pytest.raises(UserInputError, match="selects more than 1000000 steps"):
        parse_steps("0:999999:1,1000000:1000001:1")  # the union counts too
