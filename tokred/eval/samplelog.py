"""The per-sample log of ``tokred compare`` (``OUTPUT/samples.jsonl``): it never loses nor duplicates a sample.

The first line is a header with the settings that decide every answer (model, dataset and the dataset's content hash,
generation length, FLOPs convention); a run whose settings differ is refused rather than mixing records. Then one JSON
record per evaluated sample.

Guarantees, each checked by ``tests/faults``:

* **Whole lines only.** A batch of records is serialised first and written with one ``write`` on an ``O_APPEND``
  descriptor, then fsynced. If the write fails (a full disk, a quota), the file is truncated back to its last complete
  line and one :class:`~tokred.errors.OutputError` says how many records are kept.
* **A torn tail is healed.** A crash in the middle of a write leaves a last line without its newline; it is cut off
  when the log is opened (that sample is simply evaluated again). A bad line *before* the tail is corruption and is
  refused with its line number.
* **One writer.** The folder is locked (``fcntl.flock`` on ``samples.jsonl.lock``) for the whole run; a second run on
  the same ``--output`` is refused at once instead of interleaving records.
* **No duplicates.** Two records for the same (strategy, options, sample id) are refused with their line numbers.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with SampleLog(folder, {"model": "m"}) as log:
    ...     log.append_batch([{"strategy": "none", "options": {}, "id": "a"}])
    >>> len(SampleLog(folder, {"model": "m"}).records)
    1
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokred.errors import ConfigError, OutputError

LOG_NAME = "samples.jsonl"
LOCK_NAME = "samples.jsonl.lock"


def check_output_folder(folder: str | Path) -> Path:
    """Validate ``--output`` before anything is loaded: a writable folder (created when missing).

    Args:
        folder: The folder given by the user.

    Returns:
        The folder as a ``Path``.

    Raises:
        OutputError: For an empty name, a path that is a file (or under one), or a location that cannot be written.
    """
    if not str(folder).strip():
        raise OutputError("--output is empty: give a folder, e.g. --output runs/fastv (it is created if missing)")
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"--output {path} is a file, not a folder: give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"--output {path}: cannot create the folder ({err.strerror or err}); choose another"
        ) from None
    probe = path / f".tokred-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(
            f"--output {path} is not writable ({err.strerror or err}); choose a folder you can write to"
        ) from None
    return path


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (POSIX main thread; elsewhere a no-op)."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = mask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """What identifies a record: its strategy label, its options (as canonical JSON) and its sample id."""
    return (
        str(record.get("strategy")),
        json.dumps(record.get("options"), sort_keys=True),
        str(record.get("id")),
    )


class SampleLog:
    """Append-only JSONL of per-sample records; reading it back tells which (strategy, options, id) are done.

    Strategies can be added or re-configured between runs: each record carries its strategy's options, and only
    matching records are reused. Use it as a context manager (or call :meth:`close`) to release the folder's lock.

    Args:
        folder: The output folder, or ``None`` to keep records in memory only.
        fingerprint: The header: settings that decide every answer (a resumed run must match them).

    Attributes:
        path: The log file (``None`` in memory).
        records: Every record read back or appended.
        healed: Bytes of a torn last line that were cut off when opening.

    Raises:
        ConfigError: If the log was written with other settings (the differing keys are named), holds a corrupt line
            before its tail, or holds the same record twice.
        OutputError: If the folder is not writable or another run holds its lock.
    """

    def __init__(self, folder: Path | None, fingerprint: dict[str, Any]) -> None:
        self.path: Path | None = None
        self.records: list[dict[str, Any]] = []
        self.healed = 0
        self._lock_fd: int | None = None
        self._keys: dict[tuple[str, str, str], int] = {}
        if folder is None:
            return
        folder = check_output_folder(folder)
        self.path = folder / LOG_NAME
        self._lock(folder)
        try:
            self._open(fingerprint)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------- lock

    def _lock(self, folder: Path) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock
            return
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"--output {folder}: cannot create its lock file ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"another tokred compare (pid {holder}) is writing to {folder}; wait for it to finish or use another "
                "--output folder"
            ) from None
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only a hint in the message of a refused second run

    def close(self) -> None:
        """Release the folder's lock (records stay on disk). Safe to call twice."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> SampleLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- read

    def _open(self, fingerprint: dict[str, Any]) -> None:
        """Read the log back; only once it is known to be ours and sound, cut a torn last line off."""
        assert self.path is not None
        data = self.path.read_bytes() if self.path.exists() else b""
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
        lines = data[:end].decode("utf-8", errors="replace").split("\n")[:-1]
        if lines:
            self._check_header(lines[0], fingerprint)
            for lineno, line in enumerate(lines[1:], start=2):
                self._add(self._parse(line, lineno), lineno)
        if end < len(data):
            self.healed = len(data) - end
            with self.path.open("r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        if not lines:
            self._write_bytes((json.dumps({"header": fingerprint}) + "\n").encode())

    def _parse(self, line: str, lineno: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{self.path} line {lineno} is corrupt ({err.msg}); delete that line (its sample is evaluated "
                "again) or use another --output folder"
            ) from None
        if not isinstance(record, dict) or "id" not in record or "strategy" not in record:
            raise ConfigError(f"{self.path} line {lineno} is not a sample record; delete it or use another --output")
        return record

    def _check_header(self, line: str, fingerprint: dict[str, Any]) -> None:
        try:
            header = json.loads(line).get("header")
        except (json.JSONDecodeError, AttributeError):
            header = None
        if not isinstance(header, dict):
            raise ConfigError(
                f"{self.path} has no header line; it was not written by tokred compare. Use another --output"
            )
        if header == fingerprint:
            return
        diffs = [
            f"{key}: {header.get(key)!r} in the log, {fingerprint.get(key)!r} now"
            for key in sorted(set(header) | set(fingerprint))
            if header.get(key) != fingerprint.get(key)
        ]
        what = "the dataset's content changed" if diffs and all(d.startswith("dataset") for d in diffs) else ""
        if "dataset_sha256" in fingerprint and "dataset_sha256" not in header:
            what = "it predates dataset hashing, so its dataset cannot be checked"
        raise ConfigError(
            f"{self.path} was written with other settings{' (' + what + ')' if what else ''}: {'; '.join(diffs)}. "
            "Use another --output folder, or delete it to start again"
        )

    def _add(self, record: dict[str, Any], lineno: int) -> None:
        key = record_key(record)
        first = self._keys.get(key)
        if first is not None:
            where = f"lines {first} and {lineno}" if lineno > 0 else f"line {first} and this run"
            raise ConfigError(
                f"{self.path}: sample {key[2]!r} of strategy {key[0]!r} is recorded twice ({where}); delete one of "
                "them or use another --output folder"
            )
        self._keys[key] = lineno
        self.records.append(record)

    # ------------------------------------------------------------------------------------------- query

    def done(self, label: str, options: dict[str, Any]) -> set[str]:
        """Sample ids already evaluated for this strategy label and options."""
        return {str(r["id"]) for r in self.matching(label, options)}

    def matching(self, label: str, options: dict[str, Any]) -> list[dict[str, Any]]:
        """Records of this label and options (records of other options are kept but not used)."""
        return [r for r in self.records if r["strategy"] == label and r.get("options") == options]

    # ------------------------------------------------------------------------------------------- write

    def append_batch(self, records: Iterable[dict[str, Any]]) -> None:
        """Write a batch of records as whole lines in one write, then fsync.

        Raises:
            ConfigError: If a record repeats one already in the log, or holds a value JSON cannot carry (NaN).
            OutputError: If the disk is full or the write fails otherwise (no partial line is left behind).
        """
        batch = list(records)
        lines = []
        for record in batch:
            try:
                lines.append(json.dumps(record, allow_nan=False) + "\n")
            except ValueError as err:
                raise ConfigError(f"record of sample {record.get('id')!r} cannot be written: {err}") from None
        keys = [record_key(r) for r in batch]
        if len(set(keys)) != len(keys):
            raise ConfigError("a batch holds the same sample twice; sample ids must be unique")
        for key in keys:
            if key in self._keys:
                raise ConfigError(f"sample {key[2]!r} of strategy {key[0]!r} is already in {self.path or 'the log'}")
        with _signals_deferred():  # Ctrl-C lands after the batch is on disk and counted, never in between
            if self.path is not None and lines:
                self._write_bytes("".join(lines).encode())
            for record in batch:
                self._add(record, -1)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record (see :meth:`append_batch`)."""
        self.append_batch([record])

    def _write_bytes(self, payload: bytes) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError as err:
                os.ftruncate(fd, start)  # no partial line: back to the last complete record
                kept = len(self.records)
                reason = "no space left on the device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
                raise OutputError(
                    f"cannot write {self.path}: {reason}; {kept} records kept, free space and rerun the same "
                    "command to resume"
                ) from None
        finally:
            os.close(fd)
