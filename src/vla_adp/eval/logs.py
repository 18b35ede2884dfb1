"""JSONL run logs that survive being killed: append-only, one fsync'd line per record, resumable.

* Writing: every record is one line, flushed and fsync'd before the runner goes on, so a killed run
  loses at most the episode in progress. A line cut short by a kill is removed before the next
  append (:func:`repair_tail`), so it can never end up in the middle of a file.
* Reading: a truncated *last* line is tolerated (warned about); a bad line elsewhere is an error
  that names the file and line. Query lines count only when their episode's ``episode`` line
  follows; lines of an interrupted attempt are dropped.
* Identity: a run is defined by its config (checkpoint, suite, policy, pruner, seed, step limits,
  renderer, ...). :func:`config_hash` is a hash of its canonical JSON; ``config["method"]`` (the
  part without suite, checkpoint and step limits) gives the ``method_hash`` a report row groups by.
* Resume: :func:`finished_episodes` lists the (suite, task, episode) a config has already logged;
  the runner skips them, so a rerun neither repeats nor loses an episode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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


# -- reading -------------------------------------------------------------------------------
@dataclass
class Logs:
    """Records of one or more log files; query lines only of completed episodes."""

    runs: list[RunRecord] = field(default_factory=list)
    episodes: list[EpisodeRecord] = field(default_factory=list)
    queries: list[QueryRecord] = field(default_factory=list)
    dropped_queries: int = 0

    def extend(self, other: "Logs") -> None:
        self.runs += other.runs
        self.episodes += other.episodes
        self.queries += other.queries
        self.dropped_queries += other.dropped_queries


def log_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the ``*.jsonl`` files under them."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*.jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"log not found: {p}")
    return out


def parse_record(data: Any, where: str):
    if not isinstance(data, dict) or data.get("kind") not in RECORDS:
        raise ValueError(f"{where}: expected a JSON object with kind in {sorted(RECORDS)}")
    cls = RECORDS[data["kind"]]
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as e:
        raise ValueError(f"{where}: not a valid {data['kind']} record ({e})") from None


def read_log(path: str | Path) -> Logs:
    """One log file; see the module docstring for what is tolerated."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    tail_cut = lines[-1] != b""  # no final newline: the last line may be cut short
    logs, pending = Logs(), {}
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = parse_record(json.loads(raw), f"{path}:{n}")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            if tail_cut and n == len(lines):
                warnings.warn(f"{path}:{n}: ignoring a truncated last line")
                break
            raise ValueError(f"{path}:{n}: corrupt log line ({e})") from None
        _add(logs, pending, rec)
    logs.dropped_queries += sum(len(q) for q in pending.values())
    return logs


def _add(logs: Logs, pending: dict, rec) -> None:
    if isinstance(rec, RunRecord):
        logs.runs.append(rec)
        return
    key = (rec.config_hash, rec.suite, rec.task_id, rec.episode)
    if isinstance(rec, QueryRecord):
        if rec.query == 0 and pending.get(key):  # a new attempt: the previous one was interrupted
            logs.dropped_queries += len(pending[key])
            pending[key] = []
        pending.setdefault(key, []).append(rec)
    else:
        logs.episodes.append(rec)
        logs.queries += pending.pop(key, [])


def read_logs(paths: Iterable[str | Path]) -> Logs:
    """Every file (folders expanded) merged; duplicate episodes are kept once, with a warning."""
    logs = Logs()
    for p in log_files(paths):
        logs.extend(read_log(p))
    unique: dict[tuple, EpisodeRecord] = {}
    for ep in logs.episodes:
        unique.setdefault(ep.key, ep)
    if len(unique) < len(logs.episodes):
        warnings.warn(f"{len(logs.episodes) - len(unique)} duplicate episode records ignored "
                      "(the same config, suite, task and episode logged more than once)")
        logs.episodes = list(unique.values())
    return logs


def finished_episodes(paths: Iterable[str | Path], config_hash_: str) -> set[tuple[str, int, int]]:
    """(suite, task_id, episode) already logged for this config in the existing files among ``paths``."""
    existing = [p for p in map(Path, paths) if p.exists()]
    if not existing:
        return set()
    logs = read_logs(existing)
    return {(e.suite, e.task_id, e.episode) for e in logs.episodes if e.config_hash == config_hash_}
