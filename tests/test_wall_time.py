"""benchmarks/wall_time.py on the tiny data: a check that it runs and prints every part."""

import re
import subprocess
import sys

from conftest import ROOT, SHORT, free_port

PARTS = ("steps", "test pass", "start-up", "between epochs", "last write", "exit")


def test_the_wall_time_benchmark_splits_both_conditions(data_dir, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "wall_time.py"), "--rounds", "1"]
    command += ["--data-dir", str(data_dir), "--flags", " ".join(SHORT), "--target", "1000"]
    command += ["--port", str(free_port()), "--closed-port", str(free_port())]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = result.stdout.split("\n" + "with a Visdom server: ")
    assert len(blocks) == 2 and "\nno server: wall time " in blocks[0]
    for block in blocks:
        lines = block.splitlines()
        for part in PARTS:
            row = re.compile(rf" +{part} +-?[\d.]+ s +-?[\d.]+%")
            assert sum(bool(row.fullmatch(line)) for line in lines) == 1, (part, block)
        assert "everything but the steps and the test pass: " in block
        # the epoch lines were read: the first one's test loss is below the target of 1000
        assert "time to quality (test loss ≤ 1000.0): " in block and "from launch" in block
