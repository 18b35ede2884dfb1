"""JSONL run logs that survive being killed: append-only, one fsync'd line per record, resumable.

This is the one reader of run logs: the report, the resume logic and every picture start here.

* Writing: every record is one line, flushed and fsync'd before the runner goes on, so a killed run
  loses at most the episode in progress. A line cut short by a kill is removed before the next
  append (:func:`repair_tail`), so it can never end up in the middle of a file.
* Reading: a torn *last* line (no newline after it) is skipped with a warning; any other bad line is
  an error that names the file and line. Query lines count only once their episode's ``episode``
  line follows; lines of an interrupted attempt are dropped (and counted).
* Merging: logs from many machines merge by concatenation, and a resumed or repeated run may log an
  episode twice; every (config_hash, suite, task_id, episode) counts once, with the query lines of
  the attempt its first ``episode`` line closed: the record the runner's resume treated as done.
* Identity: a run is defined by its config (checkpoint, suite, policy, pruner, seed, step limits,
  renderer, ...). :func:`config_hash` is a hash of its canonical JSON; ``config["method"]`` (the
  part without suite, checkpoint and step limits) gives the ``method_hash`` a report row groups by.
* Resume: :func:`finished_episodes` lists the (suite, task, episode) a config has already logged;
  the runner skips them, so a rerun neither repeats nor loses an episode.
* One writer per file: a run holds :class:`LogLock` (``flock`` on ``<log>.lock``, which names the
  holder's host, pid and command) for as long as it appends; a second run on the same log refuses
  with :class:`LogBusy` instead of interleaving its query lines with the first one's (which would
  read as interrupted attempts and drop records). Runs that share work use one log each
  (:func:`worker_log`) and skip what the others finished. The lock is released when the process
  ends, however it ends; it is as reliable as ``flock`` on the file system (local disks, NFSv4).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import functools
import hashlib
import json
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from vla_adp.eval.schema import RECORDS, EpisodeRecord, QueryRecord, RunRecord

CHECKPOINT_ID_FILES = ("config.json", "dataset_statistics.json", "model.safetensors.index.json")


# -- identity ------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """Numpy scalars/arrays, tuples, dataclasses and paths as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def config_hash(config: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the config's canonical JSON (key order does not matter)."""
    text = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_identity(path: str | Path) -> dict[str, Any]:
    """Folder name plus hashes of its small description files: the same on every machine.

    Hashing 15 GB of weights per run is not affordable; the config, statistics and weight index
    tell the published checkpoints apart.
    """
    p = Path(path)
    files = {}
    for name in CHECKPOINT_ID_FILES:
        f = p / name
        if f.is_file():
            files[name] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return {"name": p.resolve().name, "files": files}


# -- writing -------------------------------------------------------------------------------
def _complete(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def repair_tail(path: Path) -> int:
    """Cut an unterminated last line (a write killed half-way); returns the bytes removed.

    A last line that is complete JSON and only lacks its newline is kept and terminated.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        complete = _complete(data[keep:])
        if complete:
            f.write(b"\n")
        else:
            f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    if complete:
        return 0
    warnings.warn(f"{path}: removed an unterminated last line ({len(data) - keep} bytes) before appending")
    return len(data) - keep


class LogWriter:
    """Append records to a JSONL file, one fsync'd line each."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record) -> None:
        data = record.to_dict() if hasattr(record, "to_dict") else record
        self._f.write(json.dumps(jsonable(data), separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LogBusy(ValueError):
    """Another run holds the log's lock; the message names it."""


class LogLock:
    """Exclusive right to append to one log: ``flock`` on the side file ``<log>.lock``.

    The side file (kept between runs; only the lock matters) records the holder as JSON, so a refused
    run can say who holds it. Use as a context manager around reading the resume set and appending.
    """

    def __init__(self, log: str | Path):
        self.log = Path(log)
        self.path = self.log.with_name(self.log.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> "LogLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held elsewhere
            os.close(fd)
            raise LogBusy(f"{self.log} is being written by another run ({self.holder()}); wait for it to finish, or "
                          "give this run its own log (vla-adp eval --log FILE, or --worker NAME for a per-worker log "
                          "that skips what the other workers finished)") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def holder(self) -> str:
        """Who holds the lock, as the side file says."""
        try:
            h = json.loads(self.path.read_text())
            return f"pid {h['pid']} on host {h['host']} since {h['since']}: {h['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"holder unknown: {self.path} names none yet"

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "LogLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


WORKER = re.compile(r"[A-Za-z0-9._-]{1,64}")


def worker_log(log: str | Path, worker: str) -> Path:
    """The per-worker log of ``worker`` beside ``log``: ``<stem>.worker-<worker>.jsonl``."""
    if not WORKER.fullmatch(worker):
        raise ValueError(f"worker name {worker!r}: expected 1-64 characters from A-Z a-z 0-9 . _ -")
    log = Path(log)
    return log.with_name(f"{log.stem}.worker-{worker}{log.suffix or '.jsonl'}")


def sibling_logs(log: str | Path) -> list[Path]:
    """``log`` and every per-worker log beside it (those that exist): one run's whole record."""
    log = Path(log)
    base = log.name.split(".worker-")[0].removesuffix(log.suffix)
    found = sorted(log.parent.glob(f"{glob_escape(base)}.worker-*{log.suffix}")) if log.parent.is_dir() else []
    main = log.with_name(base + log.suffix)
    return ([main] if main.is_file() else []) + [p for p in found if p != main]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def write_records(path: str | Path, records: Iterable[Any]) -> Path:
    """Append records (schema dataclasses or dicts) to a log through :class:`LogWriter`."""
    with LogWriter(path) as w:
        for r in records:
            w.write(r)
    return Path(path)


# -- reading -------------------------------------------------------------------------------
EpisodeKey = tuple[str, str, int, int]  # (config_hash, suite, task_id, episode)
KEY_TYPES = {"config_hash": str, "suite": str, "task_id": int, "episode": int, "query": int}


@dataclass
class RunLog:
    """One or more log files merged: every episode once, with the query lines of the attempt it closed.

    Args:
        episodes: episode record per (config_hash, suite, task_id, episode); the first one read wins.
        queries: that episode's query records in query order (only episodes that have any).
        runs: every ``run`` record in reading order (one per start or resume).
        dropped_queries: query lines of interrupted attempts (no ``episode`` line followed them).
        duplicate_episodes: episode lines ignored because their episode was already read.
    """

    episodes: dict[EpisodeKey, EpisodeRecord] = field(default_factory=dict)
    queries: dict[EpisodeKey, list[QueryRecord]] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    dropped_queries: int = 0
    duplicate_episodes: int = 0

    @property
    def config_hashes(self) -> list[str]:
        return sorted({k[0] for k in self.episodes} | {r.config_hash for r in self.runs})

    def run(self, config_hash_: str) -> RunRecord | None:
        """The first run record of a config (every restart of one config writes the same config)."""
        return self._first_runs.get(config_hash_)

    @functools.cached_property
    def _first_runs(self) -> dict[str, RunRecord]:
        # built on first use, after reading: reports look configs up once per method and per row
        out: dict[str, RunRecord] = {}
        for r in self.runs:
            out.setdefault(r.config_hash, r)
        return out

    def method_of(self, config_hash_: str) -> str:
        """The config's ``method_hash`` (its run record), else the config hash itself."""
        run = self.run(config_hash_)
        return run.method_hash if run is not None else config_hash_

    def all_queries(self) -> list[QueryRecord]:
        """Every kept query record, by episode key then query index."""
        return [q for key in sorted(self.queries) for q in self.queries[key]]


def log_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the ``*.jsonl`` files under them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"no *.jsonl logs under {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"run log not found: {p}")
    return out


def parse_record(data: Any, where: str):
    """A schema record from one decoded line; ``where`` (``file:line``) starts every error."""
    if not isinstance(data, dict) or data.get("kind") not in RECORDS:
        raise ValueError(f"{where}: expected a JSON object with kind in {sorted(RECORDS)}, got {str(data)[:80]!r}")
    cls = RECORDS[data["kind"]]
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: not a valid {data['kind']} record: lacks fields {missing}")
    names = {f.name for f in fields}
    types = {k: t for k, t in KEY_TYPES.items() if k in names}
    bad = [f"{k}={data[k]!r}" for k, t in types.items() if not _is(data[k], t)]
    if bad:  # the keys records are merged and sorted by
        raise ValueError(f"{where}: not a valid {data['kind']} record: {', '.join(bad)} (expected "
                         f"{', '.join(f'{k}: {t.__name__}' for k, t in types.items())})")
    # Fields newer writers add are dropped, not fatal: old readers keep working on new logs.
    return cls(**{k: v for k, v in data.items() if k in names})


def _is(value: Any, t: type) -> bool:
    return isinstance(value, t) and not (t is int and isinstance(value, bool))


def _records(path: Path) -> Iterator[Any]:
    """The records of one file; a torn last line (no newline after it) is skipped with a warning."""
    lines = path.read_bytes().split(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if n == len(lines):  # nothing after it: a write cut short by a kill
                warnings.warn(f"{path}:{n}: ignoring a truncated last line (a torn last line: the run was "
                              "killed while writing it)")
                return
            raise ValueError(f"{path}:{n}: not valid JSON, a corrupt log line ({e})") from None
        yield parse_record(data, f"{path}:{n}")


def _read_file(path: Path, log: RunLog) -> None:
    pending: dict[EpisodeKey, list[QueryRecord]] = {}  # the attempt in progress per episode
    for rec in _records(path):
        if isinstance(rec, RunRecord):
            log.runs.append(rec)
            continue
        key = (rec.config_hash, rec.suite, rec.task_id, rec.episode)
        if isinstance(rec, QueryRecord):
            attempt = pending.setdefault(key, [])
            if attempt and rec.query <= attempt[-1].query:  # a new attempt: the previous one was interrupted
                log.dropped_queries += len(attempt)
                attempt.clear()
            attempt.append(rec)
        elif key in log.episodes:  # concatenated or overlapping logs: count the episode once
            log.duplicate_episodes += 1
            pending.pop(key, None)
        else:
            log.episodes[key] = rec
            if pending.get(key):
                log.queries[key] = pending.pop(key)
    log.dropped_queries += sum(len(q) for q in pending.values())


def read_logs(paths: str | Path | Iterable[str | Path]) -> RunLog:
    """Merge JSONL logs (files, or folders searched for ``*.jsonl``); see the module docstring."""
    log = RunLog()
    for path in log_files([paths] if isinstance(paths, (str, Path)) else paths):
        _read_file(path, log)
    if log.duplicate_episodes:
        warnings.warn(f"{log.duplicate_episodes} duplicate episode records ignored (the same config, suite, task "
                      "and episode logged more than once); the first one read is kept")
    return log


def read_log(path: str | Path) -> RunLog:
    """One log file (:func:`read_logs` of it)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"run log not found: {path}")
    return read_logs([path])


def finished_episodes(paths: Iterable[str | Path], config_hash_: str) -> set[tuple[str, int, int]]:
    """(suite, task_id, episode) already logged for this config in the existing files among ``paths``."""
    existing = [p for p in map(Path, paths) if p.exists()]
    if not existing:
        return set()
    return {(k[1], k[2], k[3]) for k in read_logs(existing).episodes if k[0] == config_hash_}


# -- selecting -----------------------------------------------------------------------------
def episode_keys(log: RunLog, configs: set[str] | None = None, **match: Any) -> list[EpisodeKey]:
    """Episodes with query records, in ``configs`` (config hashes; ``None`` = all) and with the given
    ``suite`` / ``task_id`` / ``episode`` (``None`` matches all)."""
    names = ("suite", "task_id", "episode")
    unknown = sorted(set(match) - set(names))
    if unknown:
        raise ValueError(f"cannot select episodes by {unknown}; use {names}")
    out = []
    for key in sorted(log.queries):
        fields = dict(zip(names, key[1:]))
        if (configs is None or key[0] in configs) and all(v is None or fields[n] == v for n, v in match.items()):
            out.append(key)
    return out


def select_queries(log: RunLog, configs: set[str] | None = None, query: int | None = None,
                   **match: Any) -> list[QueryRecord]:
    """Query records of :func:`episode_keys` (same filters), optionally only query number ``query``."""
    return [q for key in episode_keys(log, configs, **match) for q in log.queries[key]
            if query is None or q.query == query]
