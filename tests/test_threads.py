"""The thread policy's decisions on made-up step times, and how main.py uses and reports it."""

import importlib.util
import subprocess
import sys

import pytest
import torch

import main
from conftest import QUICK, ROOT, metrics
from helpers import flags, messages
from helpers.threads import ThreadPolicy, ThreadTuner

WINDOW = 0.05  # seconds of steps in a window, as ThreadTuner measures them
IDLE = {1: 1.0, 2: 0.75}  # seconds per step relative to 1 thread: idle, 2 threads are faster
BUSY = {1: 1.0, 2: 20.0}  # one core taken by another program: 2 threads collapse


def run_windows(policy: ThreadPolicy, speeds: dict[int, float], windows: int) -> list[str]:
    """Feed `windows` windows at the per-step times `speeds` (by count); the changes announced."""
    changes = []
    for _ in range(windows):
        per_step = 0.001 * speeds[policy.threads]
        steps = max(1, round(WINDOW / per_step))
        change = policy.observe(steps, steps * per_step)
        if change:
            changes.append(str(change))
    return changes


def test_idle_times_choose_the_most_threads_and_keep_them():
    policy = ThreadPolicy(2)
    assert policy.threads == 1  # a run starts at the count that cannot collapse
    changes = run_windows(policy, IDLE, 6)
    assert policy.chosen == 2 and changes == [
        "threads: 1 -> 2 (2 threads 1.3x faster per step than 1: cores are free; first calibration)"
    ]
    assert run_windows(policy, IDLE, 2000) == [] and policy.chosen == 2  # 100 s, re-checked often


def test_busy_times_keep_one_thread_and_try_two_only_a_step_at_a_time():
    policy = ThreadPolicy(2)
    counts = []
    for _ in range(2000):  # 100 s of training at 1 thread
        counts.append(policy.threads)
        assert run_windows(policy, BUSY, 1) == []
    assert policy.chosen == 1
    # each calibration drops 2 threads after one window, and re-checks grow rarer while 1 holds
    assert 1 <= counts.count(2) <= 6


def test_a_collapse_at_two_threads_switches_to_one_at_once():
    policy = ThreadPolicy(2)
    run_windows(policy, IDLE, 6)
    changes = run_windows(policy, BUSY, 3)
    assert policy.chosen == 1
    assert changes == [
        "threads: 2 -> 1 (1 thread 20.0x faster per step than 2: the CPU is shared; "
        "steps had got 26.7x slower)"
    ]


def test_a_recalibration_brings_two_threads_back_when_they_are_faster_again():
    policy = ThreadPolicy(2, recalibrate_seconds=5.0)
    run_windows(policy, IDLE, 6)
    run_windows(policy, BUSY, 3)
    changes = run_windows(policy, IDLE, round(5.0 / WINDOW) + 20)  # past the next re-check, 5 s on
    assert policy.chosen == 2
    assert changes == [
        "threads: 1 -> 2 (2 threads 1.3x faster per step than 1: cores are free; periodic re-check)"
    ]


def test_a_first_calibration_that_kept_one_thread_is_checked_again_soon():
    """A noisy first measure (2 threads slower for a moment) keeps the start count; the re-check
    comes after the first interval, not its double, and finds 2 threads."""
    policy = ThreadPolicy(2, recalibrate_seconds=5.0)
    assert run_windows(policy, {1: 1.0, 2: 1.2}, 6) == [] and policy.chosen == 1
    changes = run_windows(policy, IDLE, round(5.0 / WINDOW) + 20)  # less than 10 s at 1 thread
    assert changes == [
        "threads: 1 -> 2 (2 threads 1.3x faster per step than 1: cores are free; periodic re-check)"
    ]


def test_one_noisy_window_does_not_flip_the_count():
    policy = ThreadPolicy(2)
    run_windows(policy, IDLE, 6)
    assert policy.chosen == 2
    # a window twice as slow while training: no calibration
    assert policy.observe(50, 50 * 0.0016) is None and not policy.schedule and policy.threads == 2
    # a window 5x slower starts a calibration, which measures afresh and keeps 2 threads
    assert policy.observe(10, 10 * 0.004) is None and policy.schedule
    assert run_windows(policy, IDLE, 6) == [] and policy.chosen == 2
    # within a calibration, one window of 1 thread that happens to be fast is outvoted
    policy.start_calibration("test", 5.0)
    times = {2: [0.8, 0.8, 0.8], 1: [0.7, 1.0, 1.0]}
    while policy.schedule:
        assert policy.observe(10, 0.01 * times[policy.threads].pop(0)) is None
    assert policy.chosen == 2


def test_the_first_calibration_takes_more_threads_at_a_tie_later_ones_keep_the_count():
    policy = ThreadPolicy(2)
    tie = {1: 1.0, 2: 1.03}  # 2 threads 3% slower: within the 5% margin, noise
    assert run_windows(policy, tie, 6) == [
        "threads: 1 -> 2 (2 threads as fast per step as 1 within 5%: more threads at a tie; "
        "first calibration)"
    ]
    assert policy.chosen == 2
    # a later calibration keeps the count it has at a tie, either way
    policy.start_calibration("test", 5.0)
    assert run_windows(policy, {1: 1.0, 2: 1.04}, 6) == [] and policy.chosen == 2
    run_windows(policy, BUSY, 3)
    assert policy.chosen == 1
    policy.start_calibration("test", 5.0)
    assert run_windows(policy, {1: 1.0, 2: 0.97}, 6) == [] and policy.chosen == 1
    # and one beyond the margin wins either way
    policy.start_calibration("test", 5.0)
    assert run_windows(policy, IDLE, 6) and policy.chosen == 2


def test_the_policy_tries_each_halving_of_the_thread_count():
    policy = ThreadPolicy(8)
    assert policy.candidates == [8, 4, 2, 1]
    run_windows(policy, {8: 0.5, 4: 0.4, 2: 0.6, 1: 1.0}, 12)
    assert policy.chosen == 4


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_tuner_times_windows_applies_counts_and_reports_the_epochs_count(monkeypatch):
    applied = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)
    clock, announced = FakeClock(), []
    tuner = ThreadTuner(ThreadPolicy(2), announce=announced.append, clock=clock)
    tuner.begin_epoch()
    for _ in range(400):
        clock.now += 0.001 * IDLE[tuner.policy.threads]
        tuner.step()
    assert announced == [
        "threads: 1 -> 2 (2 threads 1.3x faster per step than 1: cores are free; first calibration)"
    ]
    assert applied[:3] == [1, 2, 1] and applied[-1] == 2
    assert tuner.epoch_threads() == 2  # the count of most of the epoch's steps


def test_steps_slowed_while_the_runs_writer_works_do_not_change_the_count(monkeypatch):
    """The writer's moment of work (a checkpoint, the PNG files) takes a core: steps timed then
    would start a calibration that keeps 1 thread; paused, they are not timed."""
    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)

    def announced_while_writing(paused: bool) -> list[str]:
        clock, announced, writing = FakeClock(), [], [False]
        tuner = ThreadTuner(
            ThreadPolicy(2), announce=announced.append, clock=clock, paused=lambda: writing[0]
        )
        tuner.begin_epoch()
        for step in range(1200):
            writing[0] = paused and 400 <= step < 800  # the writer's job, after calibrating
            slowed = 400 <= step < 800  # by a core the writer takes, whether paused or not
            clock.now += 0.001 * (BUSY if slowed else IDLE)[tuner.policy.threads]
            tuner.step()
        return announced[1:]  # after the first calibration's 1 -> 2

    assert announced_while_writing(paused=False)[0].startswith("threads: 2 -> 1")  # the contrast
    assert announced_while_writing(paused=True) == []


def test_a_forced_count_or_a_gpu_turns_the_policy_off():
    torch.set_num_threads(2)
    forced = ThreadTuner.for_run(1, torch.device("cpu"))
    assert forced.policy is None and forced.describe() == "threads: 1 (--threads)"
    forced.begin_epoch()
    forced.step()
    assert forced.epoch_threads() == 1 == torch.get_num_threads()
    torch.set_num_threads(2)
    assert ThreadTuner.for_run(None, torch.device("cuda")).policy is None
    assert (
        ThreadTuner.for_run(None, torch.device("cpu")).describe() == "threads: auto (starts at 1)"
    )


@pytest.mark.parametrize("requested", [None, 2])
def test_a_gpu_run_records_no_cpu_thread_count(requested):
    """metrics.jsonl's `threads` is the CPU's count on the CPU, and null (None) on a GPU, whose
    steps do not run on CPU threads, with --threads or without."""
    for device, expected in (("cuda", None), ("cpu", requested or 1)):  # the policy starts at 1
        torch.set_num_threads(2)
        tuner = ThreadTuner.for_run(requested, torch.device(device), announce=lambda line: None)
        tuner.begin_epoch()
        tuner.step()
        assert tuner.epoch_threads() == expected, device
    torch.set_num_threads(2)


def test_the_first_line_and_metrics_carry_the_thread_count(data_dir, tmp_path, capsys):
    torch.set_num_threads(2)
    out = tmp_path / "auto"
    assert main.main([*QUICK, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"run {out}") and first.endswith("threads: auto (starts at 1)")
    rows = metrics(out)
    assert all(row["threads"] in (1, 2) for row in rows) and len(rows) == 2

    out = tmp_path / "forced"
    assert (
        main.main([*QUICK, "--data-dir", str(data_dir), "--out", str(out), "--threads", "2"]) == 0
    )
    assert capsys.readouterr().out.splitlines()[0].endswith("threads: 2 (--threads)")
    rows = metrics(out)
    assert [row["threads"] for row in rows] == [2, 2] and torch.get_num_threads() == 2


@pytest.mark.parametrize("start", [1, 2])
def test_denormals_stay_flushed_after_the_thread_count_changes(start):
    # In a fresh process: torch's worker threads copy the setting when they start. Starting at 1
    # thread and raising the count starts the second thread after the flush was set.
    script = (
        "import torch\nfrom helpers import startup\nstartup.after_imports()\n"
        "def kept():\n"
        "    return int((torch.full((1 << 20,), 1e-39) * 1.0 != 0).sum())\n"
        f"counts = [{start}, 3 - {start}, {start}, 3 - {start}, 2]\n"
        "for count in counts:\n"
        "    torch.set_num_threads(count)\n"
        "    print(torch.get_num_threads(), kept())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, text=True
    )
    rows = [tuple(map(int, line.split())) for line in result.stdout.splitlines()]
    assert [threads for threads, _ in rows] == [start, 3 - start, start, 3 - start, 2]
    assert all(kept == 0 for _, kept in rows)


def test_the_benchmark_quick_setting_prints_every_row(tmp_path):
    """benchmarks/throughput.py --quick: small synthetic data, one round; a check that it runs."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for condition, policy in (
        ("idle", "auto"),
        ("idle, fixed", f"--threads {torch.get_num_threads()}"),
        ("one core busy", "auto"),
        ("two runs side by side", "auto"),
    ):
        for batch in (32, flags.build_parser().get_default("batch_size")):
            assert (
                sum(
                    line.startswith(condition + " ")
                    and f" {policy} " in line
                    and f" {batch} " in line
                    for line in lines
                )
                == 1
            ), (condition, batch, result.stdout)
    counts = dict.fromkeys((torch.get_num_threads(), 1))  # torch's default count, and 1
    for threads in counts:
        bound = [line for line in lines if line.startswith("FLOP bound")]
        assert (
            sum(f" at {messages.plural(threads, 'thread')}, idle " in line for line in bound) == 1
        ), bound
    assert any(line.startswith("one core's share") for line in lines) == (len(counts) > 1)


def test_the_benchmarks_gpu_section_runs_where_cuda_is_and_says_so_where_not(tmp_path):
    """benchmarks/throughput.py --gpu --quick: every GPU row on a CUDA machine; elsewhere one line
    that says there is no CUDA device, and exit 1."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--gpu", "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if not torch.cuda.is_available():
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"--gpu: torch {torch.__version__} finds no CUDA device here; run it on one that has"
        ]
        return
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for batch in (32, 100, 1000):
        assert sum(line.startswith(f"cuda batch {batch:>4}: ") for line in lines) == 1, lines
    assert sum(line.startswith("cuda epoch as main.py runs it") for line in lines) == 1, lines
    assert lines[-1] == "time to quality: needs real MNIST (--data-dir)"


def test_the_benchmarks_busy_core_process_ends_however_its_block_is_left():
    spec = importlib.util.spec_from_file_location(
        "throughput", ROOT / "benchmarks" / "throughput.py"
    )
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    with pytest.raises(KeyboardInterrupt):
        with throughput.busy_core(limit_seconds=60) as hog:
            assert hog.poll() is None  # running
            raise KeyboardInterrupt  # as Ctrl-C would
    assert hog.poll() is not None
