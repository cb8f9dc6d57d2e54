"""Wall and CPU seconds per phase of the writer (what ``SynthSummary`` reports)."""

from __future__ import annotations

import time


class PhaseClock:
    """Wall and CPU seconds per named phase, summed over calls (the benchmark's breakdown)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def lap(self, phase: str) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + now_cpu - self._last_cpu
        self._last, self._last_cpu = now, now_cpu

    def add(self, seconds: dict[str, float], cpu_seconds: dict[str, float]) -> None:
        for phase, spent in seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + spent
        for phase, spent in cpu_seconds.items():
            self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + spent
