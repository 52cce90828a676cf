"""Fault injection on ``tokred compare``'s sample log: SIGKILL and Ctrl-C at random points, a torn tail, a full disk,
two concurrent runs, a changed dataset, a duplicated record.

Each case asserts that nothing is lost and nothing duplicated, and that the resumed run's summary equals an
uninterrupted run's, or that the run is refused with one clear line. Runs are real ``python -m tokred`` processes on
the tiny random LLaVA (a few seconds each); the seed of the random kill points is printed on failure.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tokred.errors import ConfigError, OutputError

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("TOKRED_FAULT_SEED", "16"))
LIMIT = 8
ARGS = ["compare", "--model", "tiny", "-s", "fastv", "--batch-size", "2", "--timing-repeats", "1", "--format", "json"]
SUMMARY_KEYS = ("strategy", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "agreement", "mcnemar_p",
                "relative_flops", "visual_into_llm", "mean_tokens_per_layer")  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKRED_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200"}
ENV["TOKRED_DISABLE_PROGRESS_BARS"] = "1"  # stderr holds only the error line under test (no progress lines)
ENV.pop("TOKRED_DEBUG", None)


def command(output: Path, *extra: str, limit: int = LIMIT) -> list[str]:
    return [sys.executable, "-m", "tokred", *ARGS, "--limit", str(limit), "--output", str(output), *extra]


def run(output: Path, *extra: str, limit: int = LIMIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(output, *extra, limit=limit), capture_output=True, text=True, env=ENV, timeout=300)


def log_lines(output: Path) -> list[str]:
    path = output / "samples.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def records(output: Path) -> list[dict[str, Any]]:
    """Every record of the log, checking that each line is whole JSON and that the file ends with a newline."""
    data = (output / "samples.jsonl").read_bytes()
    assert data.endswith(b"\n"), "the log ends in a partial line"
    lines = data.decode().splitlines()
    assert "header" in json.loads(lines[0])
    return [json.loads(line) for line in lines[1:]]


def assert_complete(output: Path, reference: dict[str, Any]) -> None:
    """Nothing lost, nothing duplicated, the same answers and the same summary as the uninterrupted run."""
    recs = records(output)
    keys = [(r["strategy"], r["id"]) for r in recs]
    assert len(keys) == len(set(keys)), "a sample was recorded twice"
    assert sorted(keys) == sorted(reference["keys"]), "a sample was lost"
    assert {(r["strategy"], r["id"]): r["prediction"] for r in recs} == reference["predictions"]
    summary = json.loads((output / "summary.json").read_text())
    assert summarise(summary) == reference["summary"]


def summarise(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: row[k] for k in SUMMARY_KEYS} for row in summary["rows"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    done = run(out)
    assert done.returncode == 0, done.stderr
    recs = records(out)
    assert len(recs) == 2 * LIMIT  # baseline + fastv
    return {
        "keys": [(r["strategy"], r["id"]) for r in recs],
        "predictions": {(r["strategy"], r["id"]): r["prediction"] for r in recs},
        "summary": summarise(json.loads((out / "summary.json").read_text())),
        "log": (out / "samples.jsonl").read_bytes(),
    }


def _sigint_default() -> None:
    """The child starts with Ctrl-C's default disposition, as from a terminal: a job launched in the background by a
    non-interactive shell inherits SIGINT *ignored*, and then Python installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_wait(output: Path, lines: int) -> subprocess.Popen[str]:
    """Start a run and return once its log holds ``lines`` lines (header included)."""
    proc = subprocess.Popen(
        command(output), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_sigint_default
    )
    deadline = time.monotonic() + 120
    while len(log_lines(output)) < lines:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its log had {lines} lines: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the run did not progress"
        time.sleep(0.005)
    return proc


# ------------------------------------------------------------------------------------------------ kill / Ctrl-C


def test_sigkill_at_random_points_then_resume(tmp_path, reference):
    rng = random.Random(SEED)
    out = tmp_path / "run"
    kills = []
    for _ in range(2):  # two kills, then a run to completion
        have = len(log_lines(out))
        if have + 1 > 2 * LIMIT:  # the last record is already there (a kill landed late): nothing left to cut
            break
        target = rng.randint(have + 1, 2 * LIMIT)  # lines (header included) after which to kill, plus a jitter
        proc = start_and_wait(out, target)
        time.sleep(rng.uniform(0, 0.05))
        proc.kill()
        proc.wait()
        kills.append((target, len(log_lines(out))))
    done = run(out)
    assert done.returncode == 0, (f"seed {SEED}, kills {kills}", done.stderr)
    assert_complete(out, reference)


def test_ctrl_c_exits_130_with_one_line_and_resumes(tmp_path, reference):
    out = tmp_path / "run"
    proc = start_and_wait(out, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = len(records(out))
    assert lines[0] == f"interrupted; {kept} records kept in {out / 'samples.jsonl'}, rerun the same command to resume"
    done = run(out)
    assert done.returncode == 0, done.stderr
    assert_complete(out, reference)


# ------------------------------------------------------------------------------------------------ torn tail


def test_torn_tail_is_healed_and_the_sample_evaluated_again(tmp_path, reference):
    out = tmp_path / "run"
    out.mkdir()
    lines = reference["log"].decode().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])  # crash mid-write
    done = run(out)
    assert done.returncode == 0, done.stderr
    assert_complete(out, reference)
    assert json.loads(done.stdout)["info"]["log_healed_bytes"] == len(lines[7]) // 2


def in_process(output: Path) -> Any:
    from tokred.compare import CompareSettings

    return CompareSettings(
        model="tiny", strategies=["fastv"], limit=LIMIT, batch_size=2, timing_repeats=1, output=output
    )


def test_corrupt_line_before_the_tail_is_refused_with_its_number(tmp_path, reference):
    from tokred.compare import run_compare

    out = tmp_path / "run"
    out.mkdir()
    lines = reference["log"].decode().splitlines(keepends=True)
    lines[3] = lines[3][:20] + "\n"
    (out / "samples.jsonl").write_text("".join(lines))
    with pytest.raises(ConfigError, match="line 4 is corrupt"):
        run_compare(in_process(out))
    assert (out / "samples.jsonl").read_text() == "".join(lines)  # refused, not "repaired" behind the user's back


def test_duplicated_record_is_refused_with_both_line_numbers(tmp_path, reference):
    from tokred.compare import run_compare

    out = tmp_path / "run"
    out.mkdir()
    lines = reference["log"].decode().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join([*lines[:5], lines[2]]))
    with pytest.raises(ConfigError, match="recorded twice \\(lines 3 and 6\\)"):
        run_compare(in_process(out))


# ------------------------------------------------------------------------------------------------ full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 KiB tmpfs (two pages: the lock file and part of the log) if this process may mount one, else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        yield None
        return
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_full_disk_is_one_line_without_a_partial_record(tmp_path, tiny_disk, reference, monkeypatch):
    if tiny_disk is not None:
        out = tiny_disk / "run"
        done = run(out)
        assert done.returncode == 1, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "no space left" in done.stderr, done.stderr
        kept = records(out)  # whole lines only
        assert f"{len(kept)} records kept" in done.stderr
        assert len(kept) < 2 * LIMIT
        subprocess.run(["mount", "-o", "remount,size=4m", str(tiny_disk)], check=True)
        done = run(out)
        assert done.returncode == 0, done.stderr
        assert_complete(out, reference)
    else:  # no tmpfs: a write that stores half a batch and then fails like a full disk
        _full_disk_by_monkeypatch(tmp_path, reference, monkeypatch)


def test_full_disk_simulated_write_failure(tmp_path, reference, monkeypatch):
    """Always run, tmpfs or not: the write stores part of a batch, then raises ENOSPC."""
    _full_disk_by_monkeypatch(tmp_path, reference, monkeypatch)


def _full_disk_by_monkeypatch(tmp_path: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import tokred.eval.samplelog as samplelog
    from tokred.compare import CompareSettings, run_compare

    out = tmp_path / "sim"
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 4:  # header, two batches, then a third one half written
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(samplelog.os, "write", failing_write)
    settings = CompareSettings(
        model="tiny", strategies=["fastv"], limit=LIMIT, batch_size=2, timing_repeats=1, output=out
    )
    with pytest.raises(OutputError, match="no space left on the device; 4 records kept") as info:
        run_compare(settings)
    assert "\n" not in str(info.value)
    assert len(records(out)) == 4  # the half-written batch was rolled back
    monkeypatch.setattr(samplelog.os, "write", real_write)
    result = run_compare(settings)
    keys = [(r["strategy"], r["id"]) for r in records(out)]
    assert len(keys) == len(set(keys)) == 2 * LIMIT
    assert result.rows[1]["n"] == LIMIT


# ------------------------------------------------------------------------------------------------ concurrency


def test_a_second_run_on_the_same_output_is_refused(tmp_path, reference):
    from tokred.compare import CompareSettings, run_compare
    from tokred.eval.samplelog import SampleLog

    out = tmp_path / "run"
    first = start_and_wait(out, 2)  # a real run holds the folder ...
    os.kill(first.pid, signal.SIGSTOP)  # ... and is paused while the others try, so that it cannot finish first
    try:
        settings = CompareSettings(model="tiny", strategies=["fastv"], limit=LIMIT, batch_size=2, output=out)
        with pytest.raises(OutputError, match=f"another tokred compare \\(pid {first.pid}\\) is writing to"):
            run_compare(settings)
        second = run(out)  # and a second process gets one line
        assert second.returncode == 1 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert "another tokred compare" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
    assert first.returncode == 0
    assert_complete(out, reference)
    with SampleLog(out, json.loads(log_lines(out)[0])["header"]):  # the lock is released once the run ends
        pass


# ------------------------------------------------------------------------------------------------ dataset


def test_a_changed_dataset_is_refused_on_resume(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    data = tmp_path / "data.jsonl"
    rows = [{"image": "red.png", "question": f"Q{i}?", "answers": ["red"], "id": f"q{i}"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert run(out, "--dataset", str(data)).returncode == 0
    rows[2]["answers"] = ["blue"]  # same ids, other content: the old records must not be reused
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = (out / "samples.jsonl").read_bytes()
    done = run(out, "--dataset", str(data))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "dataset's content changed" in done.stderr, done.stderr
    assert (out / "samples.jsonl").read_bytes() == before


def test_a_resumed_run_with_other_settings_names_the_difference(tmp_path, reference):
    from tokred.eval.samplelog import SampleLog

    out = tmp_path / "run"
    out.mkdir()
    (out / "samples.jsonl").write_bytes(reference["log"])
    header = json.loads(reference["log"].decode().splitlines()[0])["header"]
    with pytest.raises(ConfigError, match="max_new_tokens: 4 in the log, 8 now"):
        SampleLog(out, {**header, "max_new_tokens": 8})


def _without_ignored_exceptions(err: str) -> list[str]:
    """stderr lines minus CPython's own "Exception ignored in ..." reports (a SIGINT that lands inside a __del__ is
    swallowed by the interpreter, not by tokred; the test then interrupts again)."""
    lines, skipping = [], False
    for line in err.strip().splitlines():
        if line.startswith("Exception ignored in"):
            skipping = True
        elif skipping and (line.startswith((" ", "Traceback", "KeyboardInterrupt")) or not line.strip()):
            continue
        else:
            skipping = False
            lines.append(line)
    return lines


def test_ctrl_c_in_another_command_exits_130_with_one_line():
    args = [sys.executable, "-m", "tokred", "bench", "--repeats", "50", "--layers", "4"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_sigint_default
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "timing stock, ..." once the benchmark starts
    assert first.startswith("timing"), first
    time.sleep(0.2)
    for _ in range(5):  # 50 rounds take minutes: the process only ends because it was interrupted
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        raise AssertionError("tokred bench did not stop on SIGINT")
    assert proc.returncode == 130, err
    assert _without_ignored_exceptions(err) == ["interrupted; nothing was written"], err
