"""Benchmarks behind ``npu-pipeline bench``.

Each module here measures one layer and returns a :class:`Section`: rows of
measurements taken in the same process run, and goals stated as ratios
between those rows (never absolute times: the machines are shared and noisy).
Figures from the emulator's timing model are *modelled*, not measured on an
NPU, and their rows say so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Row:
    """One measured (or modelled) figure.

    Attributes:
        name: what was measured.
        value: the figure, in ``unit``.
        unit: e.g. ``"GB/s"``, ``"us"``, ``"ms"``, ``"GOPS"``, ``"x"``.
        note: how to read it, e.g. ``"modelled, npu1"`` or ``"median of 7"``.
    """

    name: str
    value: float
    unit: str
    note: str = ""


@dataclass(frozen=True)
class Goal:
    """A target stated by an issue, checked on this run's figures.

    Attributes:
        name: the goal in words, e.g. ``"numba pack >= 1.5x numpy transpose copy"``.
        measured: the figure that decides it (usually a ratio of two rows).
        target: the threshold.
        higher_is_better: whether ``measured`` must be >= (True) or <= (False) ``target``.
    """

    name: str
    measured: float
    target: float
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        """Whether this run meets the goal."""
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target


@dataclass(frozen=True)
class Section:
    """The result of one benchmark module."""

    title: str
    rows: list[Row]
    goals: list[Goal] = field(default_factory=list)

    @property
    def unmet(self) -> list[Goal]:
        """The goals this run does not meet."""
        return [g for g in self.goals if not g.met]

    def to_dict(self) -> dict:
        """JSON-able form, including each goal's verdict."""
        return {
            "title": self.title,
            "rows": [asdict(r) for r in self.rows],
            "goals": [asdict(g) | {"met": g.met} for g in self.goals],
        }

    def format(self) -> str:
        """A plain-text table of the rows, then the goals with their verdicts."""
        width = max([len(r.name) for r in self.rows] + [len(g.name) for g in self.goals] + [10])
        lines = [self.title, "-" * len(self.title)]
        for r in self.rows:
            lines.append(f"  {r.name:<{width}}  {r.value:>12.4g} {r.unit:<6} {r.note}")
        for g in self.goals:
            sign = ">=" if g.higher_is_better else "<="
            verdict = "met" if g.met else "NOT MET"
            lines.append(
                f"  goal: {g.name:<{width - 6}}  {g.measured:>12.4g} {sign} {g.target:<6g} "
                f"{verdict}"
            )
        return "\n".join(lines)


def median_seconds(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after ``warmup`` calls, seconds.

    The median, not the minimum, because these machines are shared: it is
    stable against a single interrupted call without hiding a slow path.
    """
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def stream_runs(device: Any, slots: list[Any], block: tuple[int, int, int], runs: int) -> None:
    """``runs`` runs of ``block`` on an open ``NpuDevice``, kept in flight back to back:
    each is started on the other of the two ``slots`` before the one before it is waited for."""
    pending = device.start(slots[0], block)
    for turn in range(1, runs):
        following = device.start(slots[turn % 2], block)
        device.wait(pending)
        pending = following
    device.wait(pending)


def random_operands(
    rng: np.random.Generator, m: int, k: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform int8 operands A (m x k) and B (k x n), the whole range included."""
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    return a, b


def shape_name(shape: tuple[int, int, int]) -> str:
    """``"MxKxN"``, as rows name a product."""
    return "x".join(map(str, shape))
