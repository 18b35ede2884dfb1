"""Closed-loop evaluation: episode -> task -> suite runners, JSONL logs, statistics, sweeps."""
