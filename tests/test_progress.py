"""tqdm progress bars: one per stage, closed when the stage ends, no warning without ipywidgets."""

from __future__ import annotations

import io
import sys
import types
import warnings

import pytest
import tqdm

from calm_azure_sync import Actor, InMemoryAuditSink, InMemoryUserStore, Reconciler
from calm_azure_sync.demo import load_sample
from calm_azure_sync.progress import TqdmProgress, tqdm_progress


def final_lines(output: str) -> list[str]:
    """What a terminal shows at the end: the last redraw (after the last \\r) of each line."""
    return [line.rpartition("\r")[2] for line in output.split("\n")]


def text_progress() -> tuple[TqdmProgress, io.StringIO]:
    output = io.StringIO()
    # mininterval=0: draw every update, so the output shows each one.
    return tqdm_progress(file=output, mininterval=0), output


def test_a_bar_closes_when_its_stage_is_done():
    progress, output = text_progress()
    progress("read", 0, 2)
    progress("read", 1, 2)
    assert not output.getvalue().endswith("\n")  # the bar is still open
    progress("read", 2, 2)
    # tqdm ends a closed bar's line; nothing more is drawn on it.
    assert output.getvalue().endswith("\n")
    assert final_lines(output.getvalue())[0].startswith("read: 100%")


def test_a_stage_reported_again_after_it_ended_gets_a_new_bar():
    progress, output = text_progress()
    progress("read", 0, 1)
    progress("read", 1, 1)
    progress("read", 0, 3)  # a second run with the same callback
    lines = final_lines(output.getvalue())
    assert lines[0].startswith("read: 100%") and "1/1" in lines[0]
    assert lines[1].startswith("read:   0%") and "0/3" in lines[1]


def test_an_unknown_total_never_counts_as_done():
    progress, output = text_progress()
    progress("read", 5, None)
    assert not output.getvalue().endswith("\n")
    progress.close()
    assert output.getvalue().endswith("\n")


def test_close_and_with_finish_a_bar_left_part_way():
    output = io.StringIO()
    with tqdm_progress(file=output, mininterval=0) as progress:
        progress("apply", 1, 3)  # the run failed here
        assert not output.getvalue().endswith("\n")
    assert output.getvalue().endswith("\n")
    assert "1/3" in final_lines(output.getvalue())[0]
    progress.close()  # closing twice is harmless
    progress("apply", 0, 2)  # and the callback still works
    assert "0/2" in final_lines(output.getvalue())[1]


async def test_no_bar_is_left_open_when_a_run_returns():
    sample = load_sample()
    progress, output = text_progress()
    reconciler = Reconciler(
        sample.directory, InMemoryUserStore(), InMemoryAuditSink(), sample.hierarchy, progress=progress
    )
    report = await reconciler.run(sample.config, actor=Actor("head-of-it", {sample.config.trust_site_id}))
    assert report.ok, report.errors
    # Every stage's bar was closed by the run itself: no close() was called.
    assert output.getvalue().endswith("\n")
    lines = [line for line in final_lines(output.getvalue()) if line]
    assert [line.partition(":")[0] for line in lines] == ["read", "plan", "apply"]
    assert all(line.split(":", 1)[1].lstrip().startswith("100%") for line in lines), lines


@pytest.fixture
def notebook_without_ipywidgets(monkeypatch):
    """What tqdm sees in a Jupyter kernel that has no ipywidgets, with tqdm.auto not imported yet."""
    shell = type("ZMQInteractiveShell", (), {})()
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets fails
    for name in ("tqdm.auto", "tqdm.autonotebook", "tqdm.notebook"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(tqdm, name.rpartition(".")[2], raising=False)


def test_no_tqdm_warning_without_ipywidgets_and_a_text_bar_instead(notebook_without_ipywidgets):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        progress, output = text_progress()
        progress("read", 1, 1)
    assert [str(warning.message) for warning in caught] == []
    assert final_lines(output.getvalue())[0].startswith("read: 100%")
