"""Compiled programs by the hash of everything that went into them (`languages.Build.key`), in memory and on disk.

What is kept: a build's compiled files, or the compile_error it got from a compiler that ran to the end (a refusal,
or its memory or output budget). A compiler stopped by its time limit is not kept (on a loaded machine that is not
a property of the program), nor is a sandbox_error. The files are the sandbox's own output for that source, and
only ever run inside the sandbox again; a directory given here must be writable only by the trainer's user.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Compiled:
    """A compile result: files (name -> bytes) when it compiled, else the compile_error's detail."""

    files: dict | None
    detail: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.files is not None

    @property
    def size(self) -> int:
        return sum(map(len, (self.files or {}).values())) + len(self.detail) + len(self.stderr) + 64


class CompileCache:
    """A bounded LRU in memory, and optionally a directory that outlives the process.

    Example:
        >>> cache = CompileCache(max_bytes=1 << 20)
        >>> cache.put("k", Compiled({"prog": b"..."}))
        >>> cache.get("k").ok, cache.get("other")
        (True, None)
    """

    def __init__(self, max_bytes: int = 256 << 20, directory: str | os.PathLike | None = None):
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._items: OrderedDict[str, Compiled] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "disk_hits": 0}

    def get(self, key: str) -> Compiled | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.stats["hits"] += 1
                return found
        found = self._read(key)
        if found is None:
            self.stats["misses"] += 1
            return None
        self.stats["disk_hits"] += 1
        self._remember(key, found)
        return found

    def put(self, key: str, value: Compiled) -> None:
        self._remember(key, value)
        self._write(key, value)

    def clear(self) -> None:
        """Forget what is in memory (the directory stays)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _remember(self, key: str, value: Compiled) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= old.size if old is not None else 0
            if value.size > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += value.size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.size

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def _read(self, key: str) -> Compiled | None:
        if self.directory is None:
            return None
        try:
            data = json.loads(self._path(key).read_text())
            files = None if data["files"] is None else {n: base64.b64decode(t) for n, t in data["files"].items()}
            return Compiled(files, data.get("detail", ""), data.get("stderr", ""))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # absent, or a file another process is writing or has broken: compile again

    def _write(self, key: str, value: Compiled) -> None:
        if self.directory is None:
            return
        files = None if value.files is None else {n: base64.b64encode(b).decode() for n, b in value.files.items()}
        text = json.dumps({"files": files, "detail": value.detail, "stderr": value.stderr})
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, self._path(key))  # readers see the whole file or none
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
