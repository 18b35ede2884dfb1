"""Read JSONL run logs (:mod:`vla_adp.eval.schema`) for reports: every picture and table starts here.

Logs from many machines merge by concatenation, and a resumed run may repeat the queries of an
episode that crashed half-way; so records are keyed and the last one of each key wins:
queries by (config_hash, suite, task_id, episode, query), episodes by (config_hash, suite,
task_id, episode). A torn last line (a run killed while writing) is skipped with a warning; any
other malformed line is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vla_adp.eval.schema import EpisodeRecord, QueryRecord

EpisodeKey = tuple[str, str, int, int]  # (config_hash, suite, task_id, episode)


@dataclass
class RunLog:
    """The merged content of one or more log files."""

    queries: dict[EpisodeKey, list[QueryRecord]] = field(default_factory=dict)
    episodes: dict[EpisodeKey, EpisodeRecord] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # config_hash -> run record

    @property
    def config_hashes(self) -> list[str]:
        keys = {k[0] for k in self.episodes} | {k[0] for k in self.queries} | set(self.runs)
        return sorted(keys)

    def episode_keys(self) -> list[EpisodeKey]:
        return sorted(set(self.episodes) | set(self.queries))


def _build(cls, data: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"{where}: {data.get('kind')} record lacks fields {missing}")
    # Fields newer writers add are dropped, not fatal: old readers keep working on new logs.
    return cls(**{k: v for k, v in data.items() if k in names})


def _lines(path: Path) -> Iterable[tuple[int, dict]]:
    text = path.read_text()
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):
                warnings.warn(f"{path}:{n}: skipping a torn last line (the run was killed while writing)")
                continue
            raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"{path}:{n}: expected a JSON object with a 'kind', got {line[:80]!r}")
        yield n, data


def read_logs(paths: str | Path | Iterable[str | Path]) -> RunLog:
    """Merge JSONL logs (files, or folders searched for ``*.jsonl``) into one :class:`RunLog`."""
    files = _files([paths] if isinstance(paths, (str, Path)) else list(paths))
    queries: dict[EpisodeKey, dict[int, QueryRecord]] = defaultdict(dict)
    log = RunLog()
    for path in files:
        for n, data in _lines(path):
            where = f"{path}:{n}"
            if data["kind"] == "query":
                q = _build(QueryRecord, data, where)
                queries[(q.config_hash, q.suite, q.task_id, q.episode)][q.query] = q
            elif data["kind"] == "episode":
                e = _build(EpisodeRecord, data, where)
                log.episodes[e.key] = e
            elif data["kind"] == "run":
                log.runs[str(data.get("config_hash", ""))] = data
    log.queries = {k: [v[i] for i in sorted(v)] for k, v in queries.items()}
    return log


def _files(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"no *.jsonl logs under {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"log not found: {p}")
    return out


def write_records(path: str | Path, records: Iterable[Any]) -> Path:
    """Append records (schema dataclasses or dicts) as JSON lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r.to_dict() if hasattr(r, "to_dict") else r, default=_json_default) + "\n")
    return path


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


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
