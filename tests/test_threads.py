"""Training threads follow the cores other processes leave free (effscale/train/threads.py)."""
import json
import subprocess
import sys

import pytest
import torch

from effscale.cpuload import CpuReading, usable_cpus
from effscale.errors import EffscaleError
from effscale.train import train
from effscale.train import threads as train_threads
from effscale.train.threads import ThreadGovernor, threads_for
from test_train import config, toy  # noqa: F401  (fixture)


def test_a_core_counts_as_taken_once_others_use_more_than_a_fifth_of_it():
    assert threads_for(0.0, cpus=2, max_threads=2) == 2
    assert threads_for(0.15, cpus=2, max_threads=2) == 2  # tick noise, a shell prompt
    assert threads_for(0.5, cpus=2, max_threads=2) == 1
    assert threads_for(1.0, cpus=2, max_threads=2) == 1
    assert threads_for(3.0, cpus=2, max_threads=2) == 1  # never fewer than one
    assert threads_for(1.0, cpus=8, max_threads=4) == 4  # free cores beyond what was asked for are not taken
    assert threads_for(5.1, cpus=8, max_threads=8) == 3


def test_governor_rereads_after_its_interval_and_reports_only_changes():
    # Scripted /proc readings: (wall s, busy s of all processes, own s). Others = busy - own per second.
    script = iter([(0, 0, 0), (1, 2, 2), (5, 10, 10), (6, 12, 11), (10, 20, 15), (15, 30, 25)])
    readings = (CpuReading(wall_s=w, busy_s=b, steal_s=0.0, own_s=o, cpus=2) for w, b, o in script)
    set_to = []
    governor = ThreadGovernor(max_threads=2, interval_s=5, reader=lambda: next(readings), set_threads=set_to.append)
    assert governor.poll() is None and governor.others_cores is None  # 1 s after the start: too early to judge
    assert governor.poll() is None and governor.others_cores == 0.0  # a quiet 5 s: no change
    assert governor.poll() is None  # 1 s later: too early again
    assert governor.poll() == 1 and governor.others_cores == 1.0  # 5 s with a core busy
    assert governor.poll() == 2 and governor.others_cores == 0.0  # and quiet again
    assert set_to == [1, 2] and governor.threads == 2
    with pytest.raises(ValueError, match="max_threads=0"):
        ThreadGovernor(max_threads=0)


@pytest.mark.skipif(len(usable_cpus() or ()) != 2 or torch.get_num_threads() != 2,
                    reason="written for the project's 2-core machines")
def test_training_gives_a_busy_core_back_and_fixed_threads_stay(toy, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(train_threads, "DEFAULT_INTERVAL_S", 0.2)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        train(config(toy, tmp_path / "auto", epochs=1, max_steps=4))
        assert torch.get_num_threads() == 2  # restored after the run
        train(config(toy, tmp_path / "fixed", epochs=1, max_steps=2, threads=2))
    finally:
        hog.kill()
    records = [json.loads(line) for line in (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()]
    changes = [r for r in records if "threads" in r]
    assert changes and changes[0]["threads"] == 1 and changes[0]["others_cores"] > 0.2
    fixed = (tmp_path / "fixed" / "metrics.jsonl").read_text()
    assert '"threads"' not in fixed
    with pytest.raises(EffscaleError, match="threads=0 must be an integer >= 1, or None"):
        train(config(toy, tmp_path / "bad", threads=0))
