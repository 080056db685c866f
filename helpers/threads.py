"""How many CPU threads torch uses while training: a count that stays fast when the CPU is shared.

Torch's worker threads meet at a barrier in every operation. When one of them loses its core to
another program (or to a second run), the others wait for it, and at this model's small matrix
sizes that happens thousands of times a second: two threads then run 5-20x slower than one. Idle,
two threads are faster than one. So no fixed count is right; the count is measured instead:

- ThreadPolicy decides. It is fed the wall time of windows of training steps and answers with the
  count for the next window: it calibrates by running each candidate count for a few windows in
  turn and keeps the one with the fastest median step (one noisy window cannot decide), calibrates
  again after some seconds of training (the interval doubles while the choice holds, but not after
  a first calibration that kept the start count: that one may have measured a moment's noise),
  and at once when the steps get markedly slower than at the last calibration (the machine got
  busy). Its decisions depend only on the times it is fed, so tests feed it made-up times.
- ThreadTuner applies it to a training loop: it times the steps, feeds the windows to the policy,
  calls torch.set_num_threads and announces each change of the chosen count in one line. It
  times no window while the run's own writer thread is at work (the last epoch's checkpoint and
  pictures): that slowdown is the run's, for a moment, not the machine's, and a calibration
  measured then would keep 1 thread for the seconds until the next re-check.
"""

import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm import tqdm

from helpers.messages import plural


class Change(NamedTuple):
    """A change of the chosen thread count, and why."""

    old: int
    new: int
    reason: str

    def __str__(self) -> str:
        return f"threads: {self.old} -> {self.new} ({self.reason})"


def candidate_counts(max_threads: int) -> list[int]:
    """The counts a calibration tries: max_threads, then its halvings down to 1 (2 cores: 2, 1)."""
    counts = [max_threads]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


class ThreadPolicy:
    """Chooses torch's CPU thread count from the measured seconds per step of windows of steps.

    Feed each window with observe(); run the next window at `threads`. `chosen` is the count the
    last calibration kept; during a calibration `threads` takes each candidate's turn. A run
    starts at 1 thread, the count that cannot collapse, and calibrates at once.

    A calibration runs each candidate for `trials` windows in turn and keeps the one with the
    fastest median step, if it beats the chosen count by more than `margin` (the first keeps the
    most threads within `margin` of the fastest: see decide()). A count whose
    windows are `decisive` times slower than another's is dropped at once: at a collapse one step
    at the collapsed count can take as long as a hundred good ones, so it is not tried again.
    While training at more than 1 thread, a window `decisive` times slower than at the last
    calibration, or `recent_windows` with a median `slowdown` times slower, start a calibration
    at once (at 1 thread a slowdown means a busier CPU, where more threads cannot help).
    """

    def __init__(
        self,
        max_threads: int,
        trials: int = 3,
        recalibrate_seconds: float = 5.0,
        longest_interval_seconds: float = 60.0,
        slowdown: float = 1.5,
        decisive: float = 3.0,
        recent_windows: int = 3,
        margin: float = 1.05,
    ) -> None:
        self.candidates = candidate_counts(max_threads)
        self.trials, self.margin = trials, margin
        self.slowdown, self.decisive = slowdown, decisive
        self.first_interval, self.longest_interval = recalibrate_seconds, longest_interval_seconds
        self.chosen = self.threads = self.candidates[-1]
        self.reference = None  # the chosen count's median seconds per step at the last calibration
        self.recent = deque(maxlen=recent_windows)
        self.trained_seconds = 0.0  # seconds of steps since the last calibration ended
        self.start_calibration("first calibration", recalibrate_seconds)

    def start_calibration(self, trigger: str, interval: float) -> None:
        """Begin calibrating; `interval` is the time since the last calibration that led here."""
        self.trigger, self.interval, self.measured = trigger, interval, {}
        others = [count for count in self.candidates if count != self.chosen]
        self.schedule = ([self.chosen] + others) * self.trials  # starts at the running count
        self.threads = self.schedule[0]

    def observe(self, steps: int, seconds: float) -> Change | None:
        """Take the wall time of a window of `steps` steps run at `threads`; return the change of
        the chosen count when this window ends a calibration that changes it."""
        per_step = seconds / steps
        if self.schedule:
            return self.calibrate(per_step)
        self.trained_seconds += seconds
        self.recent.append(per_step)
        window = per_step / self.reference
        typical = (
            statistics.median(self.recent) / self.reference
            if len(self.recent) == self.recent.maxlen
            else 1.0
        )
        if self.chosen > self.candidates[-1] and (
            window > self.decisive or typical > self.slowdown
        ):
            slower = window if window > self.decisive else typical
            self.start_calibration(f"steps had got {slower:.1f}x slower", self.first_interval)
        elif self.trained_seconds >= self.interval:
            self.start_calibration("periodic re-check", self.interval)
        return None

    def calibrate(self, per_step: float) -> Change | None:
        """Record a calibration window; drop decisively slower counts; decide at the end."""
        self.measured.setdefault(self.schedule.pop(0), []).append(per_step)
        medians = self.medians()
        self.schedule = [
            count for count in self.schedule if count in medians or count not in self.measured
        ]
        if not self.schedule or len(set(medians) | set(self.schedule)) == 1:  # none to compare
            self.schedule = []
            return self.decide(medians)
        self.threads = self.schedule[0]
        return None

    def medians(self) -> dict[int, float]:
        """Median seconds per step of each measured count not decisively slower than another."""
        medians = {count: statistics.median(times) for count, times in self.measured.items()}
        fastest = min(medians.values())
        return {
            count: median for count, median in medians.items() if median < self.decisive * fastest
        }

    def decide(self, medians: dict[int, float]) -> Change | None:
        """End a calibration: keep the chosen count unless another beats it by over `margin`.

        The first calibration keeps the most threads within `margin` of the fastest instead: the
        run started at 1 thread to be safe, not by choice. A tie is noise, and a wrong choice of
        more threads shows at once (a collapse is decisive), of fewer only at the next re-check.
        """
        old, fastest = self.chosen, min(medians, key=medians.get)
        near = [count for count in medians if medians[count] <= medians[fastest] * self.margin]
        first = self.reference is None
        if first:
            self.chosen = max(near)
        elif old not in near:
            self.chosen = fastest
        self.threads, self.reference = self.chosen, medians[self.chosen]
        self.trained_seconds = 0.0
        self.recent.clear()
        if self.chosen == old:  # the count holds: re-check later (soon, if only the start count)
            self.interval = (
                self.first_interval if first else min(2 * self.interval, self.longest_interval)
            )
            return None
        self.interval = self.first_interval
        faster = statistics.median(self.measured[old]) / medians[self.chosen]
        if faster > self.margin:
            why = "the CPU is shared" if self.chosen < old else "cores are free"
            speed = f"{faster:.1f}x faster per step than {old}: {why}"
        else:
            speed = f"as fast per step as {old} within {self.margin - 1:.0%}: more threads at a tie"
        return Change(old, self.chosen, f"{plural(self.chosen, 'thread')} {speed}; {self.trigger}")


class ThreadTuner:
    """Runs a ThreadPolicy over a training loop: call begin_epoch() before an epoch's steps and
    step() after each step. Without a policy (a count forced with --threads, or a GPU, whose work
    does not wait on CPU threads) both do nothing and the count stays as it is. `on_cpu`: whether
    the steps run on the CPU, whose thread count epoch_threads() then reports. While `paused()`
    is true (the run's writer is at work) the steps are counted but not timed."""

    def __init__(
        self,
        policy: ThreadPolicy | None,
        announce: Callable[[str], None] = print,
        window_seconds: float = 0.05,
        clock: Callable[[], float] = time.perf_counter,
        forced: bool = False,
        on_cpu: bool = True,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.policy, self.announce, self.clock, self.paused = policy, announce, clock, paused
        self.window_seconds, self.forced, self.on_cpu = window_seconds, forced, on_cpu
        self.window_steps, self.window_time, self.mark = 0, 0.0, 0.0
        self.settling = 2  # the first steps allocate
        self.epoch_counts = Counter()
        if policy:
            torch.set_num_threads(policy.threads)

    @classmethod
    def for_run(
        cls,
        requested: int | None,
        device: torch.device,
        announce: Callable[[str], None] = tqdm.write,
        paused: Callable[[], bool] = lambda: False,
    ) -> "ThreadTuner":
        """`requested` threads (--threads) fixed, or on the CPU the policy from torch's count."""
        on_cpu = device.type == "cpu"
        if requested:
            torch.set_num_threads(requested)
            return cls(None, announce, forced=True, on_cpu=on_cpu)
        if not on_cpu or torch.get_num_threads() == 1:
            return cls(None, announce, on_cpu=on_cpu)
        return cls(ThreadPolicy(torch.get_num_threads()), announce, paused=paused)

    def describe(self) -> str:
        """What the run's first line says about threads."""
        if self.policy:
            return f"threads: auto (starts at {self.policy.chosen})"
        return f"threads: {torch.get_num_threads()} ({'--threads' if self.forced else 'fixed'})"

    def begin_epoch(self) -> None:
        """Start timing afresh (the time between epochs, evaluation, is not a step's)."""
        self.epoch_counts.clear()
        self.mark = self.clock() if self.policy else 0.0

    def step(self) -> None:
        """Count a finished step; at the end of a window feed the policy and apply its count."""
        if not self.policy:
            return
        now = self.clock()
        self.epoch_counts[self.policy.threads] += 1
        if self.paused():  # the window so far is dropped; the next starts after this step
            self.window_steps, self.window_time, self.mark = 0, 0.0, now
            return
        if self.settling:  # the first steps, and the first after a change of count: not timed
            self.settling, self.mark = self.settling - 1, now
            return
        self.window_steps += 1
        self.window_time += now - self.mark
        self.mark = now
        if self.window_time < self.window_seconds:
            return
        before = self.policy.threads
        change = self.policy.observe(self.window_steps, self.window_time)
        self.window_steps, self.window_time = 0, 0.0
        if self.policy.threads != before:
            torch.set_num_threads(self.policy.threads)
            self.settling = 1
            self.mark = self.clock()
        if change:
            self.announce(str(change))

    def epoch_threads(self) -> int | None:
        """The count used for most of this epoch's steps (with no policy: the fixed count); None
        off the CPU, where the steps do not run on CPU threads."""
        if not self.on_cpu:
            return None
        if not self.epoch_counts:
            return torch.get_num_threads()
        return self.epoch_counts.most_common(1)[0][0]
