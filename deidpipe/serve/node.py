"""The node: the SCP, the processing stage and one delivery thread per destination, on one queue."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from deidpipe.keys import ProjectKey
from deidpipe.policy import Policy
from deidpipe.serve.config import ServeConfig
from deidpipe.serve.deliver import Deliverer
from deidpipe.serve.process import Processor
from deidpipe.serve.queue import Queue
from deidpipe.serve.scp import StorageSCP

log = logging.getLogger("deidpipe.serve")


class Node:
    """``Node(config, key, policy).start()``; :meth:`stop` closes the port, then lets the threads finish their
    round. Everything not delivered stays in the queue for the next start."""

    def __init__(self, config: ServeConfig, key: ProjectKey, policy: Policy | None = None) -> None:
        if policy is None:
            policy = Policy.load(config.policy_file) if config.policy_file else Policy.basic()
        from deidpipe.header.engine import refuse_risk_target

        refuse_risk_target(policy, "deidpipe serve")  # a node sees one object at a time; gate it with scan
        self.config = config
        self.key = key
        self.policy = policy
        self.queue = Queue(config.queue, [d.name for d in config.destinations])
        self.deliverers = {d.name: Deliverer(d, self.queue, config.retry, config.ae_title)
                           for d in config.destinations}
        self.processor = Processor(self.queue, key, policy, quiet_period_s=config.quiet_period_s,
                                   batch=config.batch, workers=config.worker_processes, on_ready=self._dispatch)
        #: The processing stage runs in its own process (default), so that receiving is never held up by
        #: de-identification in the same interpreter; in a thread when ``process_in_child`` is False.
        self.child: Any = None
        self.scp = StorageSCP(config, self.queue, key, on_stored=self.processor.wake.set, policy=policy)
        self.started_at = 0.0
        self._stop = threading.Event()
        self._status_thread: threading.Thread | None = None

    def _dispatch(self, tickets: list[dict[str, Any]]) -> None:
        by_dest: dict[str, list[dict[str, Any]]] = {}
        for t in tickets:
            by_dest.setdefault(t["destination"], []).append(t)
        for name, ts in by_dest.items():
            self.deliverers[name].add(ts)

    @property
    def port(self) -> int:
        return self.scp.port

    def stats(self) -> dict[str, Any]:
        return {"scp": dict(self.scp.stats), "process": dict(self.processor.stats),
                "destinations": {n: dict(d.stats) for n, d in self.deliverers.items()}}

    def _write_node_file(self) -> None:
        data = {"pid": os.getpid(), "ae_title": self.config.ae_title, "host": self.config.host,
                "port": self.port if self.scp.server else None, "started_at": self.started_at,
                "updated_at": time.time(), "key_fingerprint": self.key.fingerprint(), **self.stats()}
        tmp = self.queue.path("tmp", f"node.{os.getpid()}.json")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.queue.root / "node.json")

    def _refresh_status(self) -> None:
        """The audit table and node.json brought up to date; a disk error is let pass (the next refresh, or the
        next start, writes them again)."""
        try:
            self.queue.sync_audit()
            self._write_node_file()
        except OSError:
            pass

    def _status_loop(self) -> None:
        while not self._stop.wait(2.0):
            self._refresh_status()

    def start(self) -> Node:
        self.started_at = time.time()
        again = self.queue.recover()
        if again:
            log.info("%d object(s) taken up again from an earlier run", again)
        for d in self.deliverers.values():
            d.reload()  # the outbox as recover() left it (a ticket set aside when a crash came is back)
            d.start()
        if self.config.process_in_child:
            from deidpipe.pipeline.executors import worker_context
            from deidpipe.serve.process import process_main

            ctx = worker_context("spawn")  # a fresh interpreter, without the caller's __main__
            # Not a daemon: a daemonic process may not start the pool of ``workers``. It dies with the node all the
            # same (PR_SET_PDEATHSIG, and stop() joins or kills it).
            self.child = ctx.Process(target=process_main, name="deidpipe-process", daemon=False, args=(
                str(self.queue.root), self.queue.destinations, self.key, self.policy, self.config.quiet_period_s,
                self.config.batch, os.getpid(), self.config.worker_processes, self.config.max_inflated_bytes))
            self.child.start()
            for d in self.deliverers.values():
                d.poll_outbox = True
        else:
            self.processor.start()
        self.scp.start()
        self._write_node_file()
        self._status_thread = threading.Thread(target=self._status_loop, name="deidpipe-status", daemon=True)
        self._status_thread.start()
        for d in self.config.destinations:
            log.info("destination %s", d.describe())
        return self

    def stop(self) -> None:
        self.scp.stop()
        self._stop.set()
        if self.child is not None:
            # SIGTERM: the child ends its round and stops (not a shared multiprocessing Event: setting one blocks
            # for ever once a process waiting on it has died).
            self.child.terminate()
            self.child.join(timeout=60)
            if self.child.is_alive():
                self.child.kill()
                self.child.join(timeout=10)
            self.child = None
        else:
            self.processor.stop()
        for d in self.deliverers.values():
            d.stop()
        self._refresh_status()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 60.0, expected: int | None = None) -> bool:
        """Wait until nothing is waiting to be processed or delivered (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.queue.incoming() and not any(self.queue.path("processing").glob("*.dcm")) \
                    and all(not d.pending and not d.unreleased for d in self.deliverers.values()) \
                    and not any(any(self.queue.path("outbox", n).glob("*.json")) for n in self.deliverers):
                return True
            time.sleep(0.05)
        return False


def serve(config: ServeConfig, key: ProjectKey | None = None, policy: Policy | None = None) -> Node:
    """Start a node and return it (running in background threads); ``node.stop()`` ends it."""
    return Node(config, key if key is not None else ProjectKey.load(config.key_file), policy).start()
