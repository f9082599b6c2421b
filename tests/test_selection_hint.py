"""``-k``/``-m`` that deselect every case say which options select matching cases: serial, -q, xdist, --collect-only.

Each hinted option is checked against pytest itself: adding it to the same filters collects exactly the cases
the hint counts, starting with the example it names.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from tests.test_collection import collected_ids

HINT_LINE = re.compile(r"^  (--mb-\S+(?: --mb-\S+ \S+)*(?: \S+)?)\s{2,}(\d+) cases?, e\.g\. (\S+)")


def hints(result) -> list[tuple[str, int, str]]:
    """(option, count, example) of each hint line, in the order printed."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if line.startswith("mergebench: ") and "deselected all" in line)
    found = []
    for line in lines[start + 1:]:
        match = HINT_LINE.match(line)
        if not match:
            break
        found.append((match[1].strip(), int(match[2]), match[3]))
    return found


def check_against_pytest(bench, filters: list[str], found) -> None:
    for option, count, example in found:
        ids = collected_ids(bench.runpytest("--collect-only", "-q", *filters, *option.split()))
        assert len(ids) == count, (option, count, ids[:5])
        assert ids[0] == example, option


def test_a_keyword_that_deselects_every_case_names_the_suites_and_the_option(bench):
    filters = ["-k", "ties and gemma"]
    result = bench.runpytest(*filters)  # a normal run, as a new user types it
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["collected * items / * deselected / 0 selected",
                                 "mergebench: -k 'ties and gemma' deselected all * cases of this run; matching cases "
                                 "are selected by adding one of these options:",
                                 "  --mb-suite mini-gemma  *14 cases, e.g. gemma-3-270m-ties-*  (the mini tasks on Gemma-3-270m)"])
    found = hints(result)
    assert [option for option, _, _ in found] == ["--mb-suite mini-gemma", "--mb-suite full", "--mb-suite leaderboard",
                                                  "--mb-suite tiny"]
    check_against_pytest(bench, filters, found)
    quiet = bench.runpytest("-q", *filters)
    assert hints(quiet) == found


def test_a_marker_expression_that_deselects_every_case_gets_the_same_hint(bench):
    filters = ["-m", "sparsification and coding", "-k", "gemma"]
    result = bench.runpytest("-q", *filters)
    result.stdout.fnmatch_lines(["mergebench: -k 'gemma' and -m 'sparsification and coding' deselected all * cases*"])
    found = hints(result)
    assert found and all("gemma" in example for _, _, example in found)
    check_against_pytest(bench, filters, found)
    # -m alone: the family of the opt-in extras (model_stock, tsv, iso_c, ...) is in no default grid
    only_marker = bench.runpytest("-q", "-m", "other")
    found = hints(only_marker)
    assert found[0][0] == "--mb-methods all"
    check_against_pytest(bench, ["-m", "other"], found[:2])


def test_opt_in_methods_are_offered_when_no_suite_has_the_case(bench):
    filters = ["-k", "della and toy_math"]
    result = bench.runpytest("-q", "--mb-suite", "tiny", *filters)
    found = hints(result)
    assert [option for option, _, _ in found] == ["--mb-methods all"]
    check_against_pytest(bench, ["--mb-suite", "tiny", *filters], found)


@pytest.mark.parametrize("filters", [["-k", "ties and gemma"], ["-m", "other"]])
def test_the_hint_reaches_the_terminal_under_xdist(bench, filters):
    serial = hints(bench.runpytest("-q", *filters))
    result = bench.runpytest_subprocess("-n", "2", *filters)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert hints(result) == serial
    assert sum(line.startswith("mergebench: ") for line in result.outlines) == 1, "printed once, not once per worker"


def test_a_filter_that_matches_nothing_anywhere_says_what_it_can_match(bench):
    result = bench.runpytest("-q", "-m", "maths")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["mergebench: -m 'maths' matches no case of any suite with these options. -k matches parts of "
                                 "case ids, which read MODEL-METHOD-TASK *; -m matches markers: the task's domain "
                                 "(coding, general, instruction, math, multilingual, safety) and the method's family "
                                 "(coefficient, other, sparsification)"])


def test_no_hint_when_the_filter_selects_other_tests_or_some_cases(bench):
    bench.makepyfile(test_other=textwrap.dedent("""
        def test_plain():
            pass
    """))
    result = bench.runpytest("-q", "-k", "test_plain")
    assert result.ret == pytest.ExitCode.OK
    assert not [line for line in result.outlines if line.startswith("mergebench:")]
    result = bench.runpytest("-q", "--collect-only", "-k", "soup and gsm8k_bpb_mini")
    assert collected_ids(result) == ["smollm2-135m-instruct-soup-gsm8k_bpb_mini"]
    assert not [line for line in result.outlines if line.startswith("mergebench:")]
