"""Where a run keeps what resume needs, outside the release tree.

``DST`` is what a steward copies to a share, so nothing under it may hold an input path or name. What resume and
the steward's own look-ups need does: the manifest (``manifest.parquet``: every input's relative path, and input
folders are often named after patients), and it lives in a *state folder* beside DST, never inside it:

* ``run.json``: format, the key's fingerprint, the policy's digest, the layout, how many runs, complete or not;
* ``manifest.parquet``: the index, one row per input (input relative paths: **sensitive**, keep it with the key);
* ``journal.jsonl``: crash-safe progress, one line per finished object (keyed hashes and pseudonyms only).

By default the state folder is ``<DST>.deidpipe-state`` next to DST (``out/`` -> ``out.deidpipe-state/``); the
user can name another (``--state DIR``, ``state_dir=``). It must not lie inside DST (it would be released) nor
inside SRC (nothing is ever written there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deidpipe.errors import DeidError

#: The default state folder is DST's own name with this suffix, in DST's parent folder.
STATE_SUFFIX = ".deidpipe-state"
RUN_FORMAT = 1


def default_state_dir(dst: Path) -> Path:
    """``<DST>.deidpipe-state`` beside DST (DST resolved: ``out/`` and ``out`` give the same folder)."""
    dst = Path(dst).resolve()
    return dst.parent / (dst.name + STATE_SUFFIX)


def inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies below it (paths as given: resolve them first)."""
    return a == b or b in a.parents


@dataclass(frozen=True)
class StateDir:
    """The state folder of one run and the files in it."""

    root: Path

    @classmethod
    def locate(cls, dst: Path, state_dir: str | Path | None) -> StateDir:
        return cls(Path(state_dir).resolve() if state_dir is not None else default_state_dir(dst))

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    def check_place(self, src_root: Path, dst: Path) -> None:
        """Refuse a state folder inside DST (it would be released with the objects) or inside SRC. Compared
        resolved: a state folder that is a link into either is refused too."""
        root, dst, src_root = self.root.resolve(), Path(dst).resolve(), Path(src_root).resolve()
        if inside(root, dst):
            raise DeidError("the state folder must not be inside the destination (it holds the input paths, and "
                            "the destination is meant to be shared): choose another with --state")
        if inside(root, src_root):
            raise DeidError("the state folder must not be inside the source (nothing is ever written there): "
                            "choose another with --state")

    def read(self) -> dict[str, Any] | None:
        """The run.json of an earlier run, or None when there is none."""
        try:
            return json.loads(self.run_json.read_text())
        except FileNotFoundError:
            return None

    def write(self, state: dict[str, Any]) -> None:
        """run.json, replaced atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.run_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.run_json)

    def begin(self, *, resume: bool, fresh: dict[str, Any], old_layout: bool) -> int:
        """Check this run against an earlier one (resume) or against a state folder in use (no resume), write
        run.json as not complete, and return this run's number. ``fresh`` holds the parameters a resume must
        share (key fingerprint, policy digest, layout); ``old_layout``: DST holds state of an earlier version."""
        old = self.read()
        state = {"format": RUN_FORMAT, **fresh, "runs": 1}
        if old is None:
            if resume:
                hint = (" (this destination was made by an earlier version, which kept its state inside it: "
                        "complete it with that version)") if old_layout else ""
                raise DeidError(f"cannot resume: no run state in {self.root}; pass --state DIR where the "
                                f"interrupted run kept it{hint}")
        else:
            if not resume:
                raise DeidError(f"the state folder {self.root} already holds a run: pass --resume to complete it, "
                                "or choose an empty destination (or another state folder with --state)")
            for name in fresh:
                if old.get(name) != state[name]:
                    raise DeidError(f"cannot resume: the destination was made with a different {name.split('_')[0]}")
            state["runs"] = int(old.get("runs", 1)) + 1
        state["complete"] = False
        self.write(state)
        return int(state["runs"])

    def finish(self) -> None:
        state = self.read() or {}
        state["complete"] = True
        self.write(state)
