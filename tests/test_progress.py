"""Progress display: bars or lines, worker events relayed to the controller, Rich bars inside pytest."""

from __future__ import annotations

import json

import pytest

from mergebench.progress import RichSink, live_bars_wanted
from mergebench.progress_relay import FileSink, LabelledSink, ProgressRelay


@pytest.mark.parametrize("isatty, color, environ, bars", [
    (True, "auto", {"TERM": "xterm-256color"}, True),
    (True, "yes", {}, True),
    (False, "auto", {}, False),
    (False, "yes", {}, False),  # --color=yes in CI logs colours lines, it does not redraw bars
    (True, "no", {}, False),
    (True, "auto", {"TERM": "dumb"}, False),
    (True, "auto", {"MERGEBENCH_PROGRESS": "lines"}, False),
    (False, "no", {"MERGEBENCH_PROGRESS": "bars"}, True),
])
def test_bars_only_on_an_interactive_terminal_unless_asked(isatty, color, environ, bars):
    assert live_bars_wanted(isatty, color, environ) is bars


@pytest.fixture
def relay(tmp_path):
    lines: list[str] = []
    relay = ProgressRelay(lines.append)
    relay.lines = lines
    yield relay
    relay.stop()


def test_worker_events_replay_as_the_serial_plain_lines(relay):
    sink = FileSink(relay.folder, "gw1")
    with sink.bar("score (merged)", 3, "items") as bar:
        for _ in range(3):
            bar.advance()
    with sink.bar("finetune math", None, "steps") as bar:
        bar.advance(5)
        bar.set_total(5)
    sink.note("  [built] expert tiny-llama/math in 1.0s")
    events = [json.loads(line) for line in sink.path.read_text().splitlines()]
    assert [e["ev"] for e in events][:2] == ["start", "end"] and events[1]["done"] == 3  # advances coalesced
    relay.drain()
    assert relay.lines[0] == "[gw1]   score (merged): started (3 items)"
    assert relay.lines[1].startswith("[gw1]   score (merged): 3/3 items (100%), ") and relay.lines[1].endswith("s done")
    assert relay.lines[2] == "[gw1]   finetune math: started"
    assert relay.lines[3].startswith("[gw1]   finetune math: 5/5 steps (100%), ")
    assert relay.lines[4] == "[gw1]   [built] expert tiny-llama/math in 1.0s"
    assert len(relay.lines) == 5


def test_a_partial_trailing_line_waits_for_its_end(relay):
    path = relay.folder / "gw0.log"
    note = json.dumps({"ev": "note", "message": "[built] merge"})
    path.write_text(note + "\n" + note[:10])
    relay.drain()
    assert relay.lines == ["[gw0] [built] merge"]
    with open(path, "a") as handle:
        handle.write(note[10:] + "\nnot an event\n")
    relay.drain()
    assert relay.lines == ["[gw0] [built] merge", "[gw0] [built] merge", "[gw0] not an event"]


def test_a_stage_that_raises_or_a_worker_that_dies_leaves_no_done_line(relay):
    sink = FileSink(relay.folder, "gw0")
    with pytest.raises(RuntimeError), sink.bar("merge ties", 10, "tensors") as bar:
        bar.advance(2)
        raise RuntimeError("out of memory")
    relay.drain()
    assert relay.lines == ["[gw0]   merge ties: started (10 tensors)"]
    manager = sink.bar("score (merged)", 8, "items")
    manager.__enter__().set_total(8)  # the worker dies inside this bar: no end event ever comes
    relay.worker_down("gw0")
    assert relay.lines[-1] == "[gw0]   score (merged): stopped at 0/8 (worker ended)"


def test_rich_bars_in_pytest_show_the_description_and_counts():
    from rich.console import Console

    console = Console(record=True, force_terminal=True, width=100)
    sink = RichSink(console)
    with sink.bar("merge ties", 4, "tensors") as bar:
        for _ in range(4):
            bar.advance()
        sink.note("  [built] expert tiny-llama/math")
    text = console.export_text()
    assert "merge ties" in text and "4/4" in text and "tensors" in text
    assert "[built] expert tiny-llama/math" in text  # a note prints above the bars, markup-free
    assert "  merge ties: 4/4 tensors (100%), 0s done" in text


def test_the_relay_draws_one_labelled_bar_per_worker(tmp_path):
    from rich.console import Console

    console = Console(record=True, force_terminal=True, width=100)
    bars = RichSink(console)
    relay = ProgressRelay(lambda line: None, sink_for=lambda worker: LabelledSink(bars, worker))
    try:
        first, second = FileSink(relay.folder, "gw0"), FileSink(relay.folder, "gw1")
        with first.bar("score (merged)", 6, "items") as a, second.bar("merge soup", 2, "tensors") as b:
            a.advance(6)
            b.advance(1)
            relay.drain()
            assert bars._open == 2
        relay.drain()
        assert bars._open == 0 and bars._progress is None
    finally:
        relay.stop()
    text = console.export_text()
    assert "[gw0] score (merged): 6/6 items (100%)" in text and "[gw1] merge soup: 1/2 tensors (50%)" in text


def test_bars_in_a_pytest_run_on_a_terminal(bench, monkeypatch):
    """MERGEBENCH_PROGRESS=bars stands in for a terminal: the case's stages run under Rich bars."""
    monkeypatch.setenv("MERGEBENCH_PROGRESS", "bars")
    result = bench.runpytest_subprocess("--mb-suite", "tiny", "--mb-models", "tiny-llama", "--mb-tasks", "toy_math",
                                        "--mb-methods", "soup")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "━" in out, "a Rich bar was drawn"
    result.stdout.fnmatch_lines(["*merge soup: * tensors (100%), *s done*", "*[[]built[]]*"])
