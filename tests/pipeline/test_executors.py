"""The executors' worker processes (deidpipe.pipeline.executors): how they start, and what they inherit.

Each check runs in a fresh interpreter: the start method depends on what the calling process has loaded and on
how many threads it runs, and a pytest-xdist worker runs threads of its own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import REPO

# A portal's process that has run torch (its OpenMP thread pool started) and then opens deidpipe's pool. Before
# issue 22's fix such a process started its workers by fork server (0.5 s of imports before the first object);
# forked without care, a worker that runs torch hangs in its first parallel region.
TORCH_PARENT = textwrap.dedent("""
    import os, sys
    import torch
    from deidpipe.pipeline.executors import PoolExecutor, worker_context

    def conv(ctx, n):
        x = torch.nn.functional.conv2d(torch.randn(1, 3, 96, 96), torch.randn(8, 3, 3, 3))
        y = torch.randn(300, 300) @ torch.randn(300, 300)
        return n, torch.get_num_threads(), os.environ.get("DEIDPIPE_TORCH_THREADS"), float(x.sum() + y.sum()) == 0.0

    if __name__ == "__main__":
        conv("context", -1)  # the parent's own torch work: its OpenMP pool is now running
        print("METHOD", worker_context().get_start_method())
        pool = PoolExecutor("context", 2)
        try:
            results = sorted(r for _, r, exc in pool.imap(conv, range(4)) if exc is None)
        finally:
            pool.close()
        print("RESULTS", [(n, threads, env) for n, threads, env, _ in results])
        print("PARENT THREADS", torch.get_num_threads() > 1 or os.cpu_count() == 1)
""")


def test_torch_loaded_parent_forks_and_workers_run_torch_on_one_thread(tmp_path) -> None:
    (tmp_path / "portal.py").write_text(TORCH_PARENT)
    proc = subprocess.run([sys.executable, "portal.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "METHOD fork" in proc.stdout
    assert "RESULTS [(0, 1, '1'), (1, 1, '1'), (2, 1, '1'), (3, 1, '1')]" in proc.stdout
    assert "PARENT THREADS True" in proc.stdout  # the parent's own setting is left as it was


def test_a_running_thread_means_no_fork() -> None:
    code = textwrap.dedent("""
        import threading, time
        from deidpipe.pipeline.executors import worker_context
        print("ALONE", worker_context().get_start_method())
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        print("THREAD", worker_context().get_start_method())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ALONE fork" in proc.stdout and "THREAD forkserver" in proc.stdout


def test_cuda_started_means_no_fork(monkeypatch) -> None:
    """A CUDA context cannot cross a fork. This machine has no GPU, so a stand-in says CUDA has started."""
    from types import SimpleNamespace

    from deidpipe.pipeline import executors

    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True)))
    assert not executors._torch_fork_safe()
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: False)))
    assert executors._torch_fork_safe()
    monkeypatch.delitem(sys.modules, "torch")
    assert executors._torch_fork_safe()
