"""The progress printer (alignpipe.core.progress) and the flow's stdout copy into the Prefect run log."""

import logging

import pytest

from alignpipe.core import progress

pytestmark = pytest.mark.fast


@pytest.fixture
def clock(monkeypatch):
    """A fake clock: set `clock.now` to move time."""

    class Clock:
        now = 100.0

    monkeypatch.setattr(progress, "_now", lambda: Clock.now)
    monkeypatch.delenv("RANK", raising=False)
    return Clock


def test_lines_are_throttled_by_share_and_time(clock, capsys):
    with progress.Progress("model: building tiny", total=100, unit="steps") as p:
        for step in range(100):  # 1 s a step: a line at each 10% once 10 s have passed
            clock.now += 1
            p.advance(detail=f"loss {100 - step}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model: building tiny ..."
    assert lines[1] == "model: building tiny: 10/100 steps (10%), 10s, ~1m30s left, loss 91"
    assert len(lines) == 11  # start, 9 progress lines (10% .. 90%), done
    assert lines[-1] == "model: building tiny: done in 100.0s (loss 1)"


def test_fast_steps_print_only_start_and_done(clock, capsys):
    with progress.Progress("evaluate sft: generating 300 answers", total=300) as p:
        for _ in range(10):
            clock.now += 0.5
            p.advance(30)
    assert capsys.readouterr().out.splitlines() == [
        "evaluate sft: generating 300 answers ...",
        "evaluate sft: generating 300 answers: done in 5.0s",
    ]


def test_slow_progress_prints_at_least_once_a_minute(clock, capsys):
    with progress.Progress("select: scoring", total=1000) as p:
        for _ in range(3):
            clock.now += 61
            p.advance()  # 0.1% each, but a minute has passed
        with progress.Progress("self_instruct: round 1") as unknown:
            clock.now += 9
            unknown.advance(5)
            clock.now += 60
            unknown.advance(5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == [
        "select: scoring: 1/1000 (0%), 1m01s, ~16h55m left",
        "select: scoring: 2/1000 (0%), 2m02s, ~16h54m left",
        "select: scoring: 3/1000 (0%), 3m03s, ~16h53m left",
    ]
    assert lines[5] == "self_instruct: round 1: 10, 1m09s"


def test_step_prints_start_and_done_or_failed(clock, capsys):
    with progress.step("sft: saving the model"):
        clock.now += 2.3
    with pytest.raises(ValueError), progress.step("sft: loading"):
        clock.now += 1
        raise ValueError("bad")
    assert capsys.readouterr().out.splitlines() == [
        "sft: saving the model ...",
        "sft: saving the model: done in 2.3s",
        "sft: loading ...",
        "sft: loading: failed after 1.0s",
    ]


def test_only_rank_zero_a_label_and_some_work_print(clock, capsys, monkeypatch):
    for label in ("", None):  # a caller that is silent here (scoring inside a training step)
        with progress.Progress(label, total=2) as p:
            clock.now += 30
            p.advance()
    with progress.Progress("self_instruct: writing instances of 0 new instructions", total=0):
        pass
    monkeypatch.setenv("RANK", "1")
    with progress.Progress("dpo: reference log-probs", total=2) as p:
        clock.now += 30
        p.advance()
    assert capsys.readouterr().out == ""


def test_task_output_reaches_the_run_log_once(monkeypatch, capsys):
    """A line a task prints shows once on stdout and goes to the run logger's own (API) handler only,
    not on to the root logger's console handler, which would print it a second time."""
    from alignpipe.flows import pipeline

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    api, console = Keep(), Keep()
    run_logger = logging.getLogger("test_progress.task_runs")
    run_logger.setLevel(logging.INFO)
    monkeypatch.setattr(run_logger, "handlers", [api])
    monkeypatch.setattr(logging.getLogger(), "handlers", [console])
    monkeypatch.setattr(pipeline, "get_run_logger", lambda: logging.LoggerAdapter(run_logger, {"task_run_id": "t"}))
    with pipeline.stdout_to_prefect():
        print("sft: a stage line")
        print({"loss": 1.0, "epoch": 0.5})  # what the trainer's ProgressCallback writes through tqdm.write
        print(" 50%|#  | 1/2\r100%|###| 2/2\r")  # a launched rank's tqdm bar, stderr into stdout
        print("\n\ntail", end="")
    out = "sft: a stage line\n{'loss': 1.0, 'epoch': 0.5}\n 50%|#  | 1/2\r100%|###| 2/2\r\n\n\ntail"
    assert capsys.readouterr().out == out
    assert api.messages == ["sft: a stage line", "{'loss': 1.0, 'epoch': 0.5}", "100%|###| 2/2", "tail"]
    assert console.messages == []
