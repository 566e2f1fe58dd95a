"""One daemon thread per job, started and stopped the same way: the watcher, the read meter
and the Sentinel switch listener each run their ``_run`` loop until ``stop``."""

from __future__ import annotations

import threading


class Background:
    THREAD_NAME = "memguard"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self) -> None:
        raise NotImplementedError
