"""``deidpipe serve --status``: what a queue holds, read from the queue folder (the node need not run)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _files(folder: Path, suffix: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if e.name.endswith(suffix) and e.is_file()]
    except FileNotFoundError:
        return []


def queue_status(queue: str | Path) -> dict[str, Any]:
    """Queue depth by state and destination, the oldest waiting object's age, retries and quarantines.
    Only counts, ages and keyed object ids: nothing of any object's content."""
    root = Path(queue)
    now = time.time()
    oldest: float | None = None

    def older(ts: float) -> None:
        nonlocal oldest
        oldest = ts if oldest is None else min(oldest, ts)

    waiting = {}
    for state in ("incoming", "processing"):
        entries = _files(root / state, ".dcm")
        waiting[state] = len(entries)
        for e in entries:
            try:
                older(e.stat().st_mtime)
            except FileNotFoundError:
                pass
    dests: dict[str, Any] = {}
    retries = 0
    for d in sorted(p.name for p in (root / "outbox").iterdir()) if (root / "outbox").is_dir() else []:
        pending = retrying = attempts = 0
        for e in _files(root / "outbox" / d, ".json"):
            try:
                t = json.loads(Path(e.path).read_bytes())
            except (OSError, ValueError):
                continue
            pending += 1
            older(float(t.get("queued_at", now)))
            if t.get("attempts"):
                retrying += 1
                attempts += int(t["attempts"])
        retries += attempts
        dests[d] = {"pending": pending, "retrying": retrying, "failed_attempts": attempts,
                    "delivered": len(_files(root / "delivered" / d, ".json")),
                    "quarantined": len([e for e in _files(root / "quarantine", ".json")
                                        if e.name.endswith(f".{d}.json")])}
    quarantine = _files(root / "quarantine", ".json")
    by_stage: dict[str, int] = {}
    for e in quarantine:
        try:
            stage = str(json.loads(Path(e.path).read_bytes()).get("stage"))
        except (OSError, ValueError):
            stage = "unreadable record"
        by_stage[stage] = by_stage.get(stage, 0) + 1
    node: dict[str, Any] | None = None
    try:
        node = json.loads((root / "node.json").read_text())
    except (OSError, ValueError):
        pass
    running = False
    if node and node.get("pid"):
        try:
            os.kill(int(node["pid"]), 0)
            running = now - float(node.get("updated_at", 0)) < 30
        except (OSError, ValueError):
            running = False
    return {
        "queue": str(root),
        "node_running": running,
        "node": {k: node.get(k) for k in ("pid", "ae_title", "host", "port", "started_at", "updated_at")}
        if node else None,
        "waiting": waiting,
        "depth": waiting["incoming"] + waiting["processing"] + sum(d["pending"] for d in dests.values()),
        "oldest_age_s": round(now - oldest, 3) if oldest is not None else None,
        "retries": retries,
        "destinations": dests,
        "quarantined": len(quarantine),
        "quarantined_by_stage": dict(sorted(by_stage.items())),
    }


def format_status(st: dict[str, Any]) -> str:
    lines = [f"queue {st['queue']}: node {'running' if st['node_running'] else 'not running'}",
             f"  depth {st['depth']} (incoming {st['waiting']['incoming']}, processing "
             f"{st['waiting']['processing']}, outboxes {st['depth'] - sum(st['waiting'].values())})",
             "  oldest waiting: " + ("-" if st["oldest_age_s"] is None else f"{st['oldest_age_s']:.1f} s"),
             f"  failed delivery attempts awaiting retry: {st['retries']}",
             f"  quarantined: {st['quarantined']}" + (
                 " (" + ", ".join(f"{k}: {v}" for k, v in st["quarantined_by_stage"].items()) + ")"
                 if st["quarantined"] else "")]
    for name, d in st["destinations"].items():
        lines.append(f"  -> {name}: pending {d['pending']} (retrying {d['retrying']}), delivered {d['delivered']},"
                     f" quarantined {d['quarantined']}")
    return "\n".join(lines)
