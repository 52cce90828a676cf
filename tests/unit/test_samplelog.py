"""``SampleLog`` on its own: whole lines, healed tails, refused corruption and duplicates, the lock, a full disk."""

from __future__ import annotations

import errno
import json
import os

import pytest

import tokred.eval.samplelog as samplelog
from tokred.errors import ConfigError, OutputError
from tokred.eval.samplelog import SampleLog, check_output_folder

HEADER = {"model": "m", "dataset": "d", "dataset_sha256": "abc"}


def rec(i: int, strategy: str = "none") -> dict:
    return {"strategy": strategy, "options": {}, "id": f"s{i}", "prediction": "x"}


def write_log(folder, *records, tail: str = "") -> None:
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"header": HEADER}), *(json.dumps(r) for r in records)]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n" + tail)


def test_batches_are_whole_lines_and_read_back(tmp_path):
    with SampleLog(tmp_path, HEADER) as log:
        log.append_batch([rec(0), rec(1)])
        log.append_batch([rec(2)])
    data = (tmp_path / "samples.jsonl").read_text()
    assert data.endswith("\n") and len(data.splitlines()) == 4
    again = SampleLog(tmp_path, HEADER)
    assert again.done("none", {}) == {"s0", "s1", "s2"} and again.healed == 0
    again.close()


def test_torn_tail_is_cut_off(tmp_path):
    write_log(tmp_path, rec(0), tail='{"strategy": "none", "opt')
    with SampleLog(tmp_path, HEADER) as log:
        assert log.healed == len('{"strategy": "none", "opt')
        assert log.done("none", {}) == {"s0"}
        log.append(rec(1))
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(x).get("id") for x in lines[1:]] == ["s0", "s1"]  # nothing glued onto the torn line


def test_a_torn_header_starts_a_new_log(tmp_path):
    (tmp_path / "samples.jsonl").write_text('{"header": {"mo')
    with SampleLog(tmp_path, HEADER) as log:
        assert log.healed > 0 and log.records == []
    assert json.loads((tmp_path / "samples.jsonl").read_text())["header"] == HEADER


def test_corruption_before_the_tail_is_refused(tmp_path):
    write_log(tmp_path, rec(0))
    with (tmp_path / "samples.jsonl").open("a") as f:
        f.write("{broken\n" + json.dumps(rec(1)) + "\n")
    with pytest.raises(ConfigError, match="line 3 is corrupt"):
        SampleLog(tmp_path, HEADER)


def test_duplicate_records_are_refused_with_line_numbers(tmp_path):
    write_log(tmp_path, rec(0), rec(1), rec(0))
    with pytest.raises(ConfigError, match="recorded twice \\(lines 2 and 4\\)"):
        SampleLog(tmp_path, HEADER)


def test_appending_a_recorded_sample_is_refused(tmp_path):
    with SampleLog(tmp_path, HEADER) as log:
        log.append(rec(0))
        with pytest.raises(ConfigError, match="already in"):
            log.append(rec(0))
        with pytest.raises(ConfigError, match="same sample twice"):
            log.append_batch([rec(5), rec(5)])
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2


def test_same_id_other_strategy_or_options_is_not_a_duplicate(tmp_path):
    with SampleLog(tmp_path, HEADER) as log:
        log.append_batch([rec(0), rec(0, "fastv"), {**rec(0, "fastv"), "options": {"keep_ratio": 0.5}}])
        assert len(log.records) == 3


def test_nan_is_refused_rather_than_written(tmp_path):
    with SampleLog(tmp_path, HEADER) as log:
        with pytest.raises(ConfigError, match="cannot be written"):
            log.append({**rec(0), "prefill_flops": float("nan")})
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 1


def test_other_settings_are_named(tmp_path):
    write_log(tmp_path, rec(0))
    with pytest.raises(ConfigError, match="dataset's content changed.*dataset_sha256: 'abc' in the log, 'def' now"):
        SampleLog(tmp_path, {**HEADER, "dataset_sha256": "def"})
    with pytest.raises(ConfigError, match="model: 'm' in the log, 'n' now"):
        SampleLog(tmp_path, {**HEADER, "model": "n"})


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    first = SampleLog(tmp_path, HEADER)
    with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        SampleLog(tmp_path, HEADER)
    first.close()
    SampleLog(tmp_path, HEADER).close()


def test_full_disk_rolls_back_the_batch(tmp_path, monkeypatch):
    log = SampleLog(tmp_path, HEADER)
    log.append_batch([rec(0), rec(1)])
    real = os.write

    def half_then_enospc(fd, data):
        real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(samplelog.os, "write", half_then_enospc)
    with pytest.raises(OutputError, match="no space left on the device; 2 records kept, free space and rerun"):
        log.append_batch([rec(2), rec(3)])
    log.close()
    data = (tmp_path / "samples.jsonl").read_text()
    assert data.endswith("\n") and len(data.splitlines()) == 3
    assert len(log.records) == 2


@pytest.mark.parametrize("bad", ["", "  "])
def test_empty_output_folder_is_refused(bad):
    with pytest.raises(OutputError, match="--output is empty"):
        check_output_folder(bad)


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(tmp_path / "f")


def test_a_refused_log_is_left_untouched_even_with_a_torn_tail(tmp_path):
    write_log(tmp_path, rec(0), tail='{"strategy": "no')
    before = (tmp_path / "samples.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        SampleLog(tmp_path, {**HEADER, "model": "other"})
    assert (tmp_path / "samples.jsonl").read_bytes() == before
