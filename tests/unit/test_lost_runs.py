"""The liveness check behind "no zombie runs": is the process a flow run recorded still the one running?"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest

from flows.lost_runs import ProcessId, is_gone, lost_message, process_identity


def _exited_but_unreaped(p: subprocess.Popen) -> None:
    """Wait until the child has exited (a zombie: its pid still listed, the process gone), without reaping it."""
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.02)
    raise AssertionError("the child did not exit")


def test_a_live_process_is_not_gone():
    me = process_identity()
    assert is_gone(me) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert is_gone(process_identity(child.pid)) is False
    finally:
        child.kill()
        child.wait()


def test_a_dead_process_is_gone_also_before_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    recorded = process_identity(child.pid)
    child.kill()
    if sys.platform.startswith("linux"):
        _exited_but_unreaped(child)
        assert is_gone(recorded) is True      # a kill -9'd build whose parent has not waited for it yet
    child.wait()
    assert is_gone(recorded) is True
    with pytest.raises(ProcessLookupError):
        process_identity(child.pid)


def test_a_reused_pid_is_another_process():
    me = process_identity()
    earlier = dataclasses.replace(me, start="ticks:1" if me.start.startswith("ticks:") else "ctime:1.00")
    assert is_gone(earlier) is True           # same host, same pid, another start: the recorded process is gone


def test_a_process_recorded_before_the_last_boot_is_gone():
    me = process_identity()
    if not me.boot:
        pytest.skip("no boot id on this platform")
    assert is_gone(dataclasses.replace(me, boot="another-boot")) is True


def test_another_host_or_pid_namespace_cannot_be_told():
    me = process_identity()
    assert is_gone(dataclasses.replace(me, host="elsewhere")) is None
    assert is_gone(dataclasses.replace(me, host="elsewhere", pid=999_999_999)) is None
    if me.pid_ns:   # another container on this host: pid 1 there is not our pid 1
        assert is_gone(dataclasses.replace(me, pid_ns="pid:[1]", pid=999_999_999)) is None


def test_wall_clock_start_times_match_within_a_second(monkeypatch):
    """Where only a wall-clock start time is known (not Linux), a small drift is the same process."""
    import flows.lost_runs as lr
    me = ProcessId(host=process_identity().host, pid=4242, start="ctime:1000.00")
    here = dataclasses.replace(me, pid=1)
    monkeypatch.setattr(lr, "_start_of", lambda pid: "ctime:1000.40")
    assert is_gone(me, here) is False
    monkeypatch.setattr(lr, "_start_of", lambda pid: "ctime:1031.00")
    assert is_gone(me, here) is True


def test_labels_round_trip_and_message():
    me = process_identity()
    assert ProcessId.from_labels(me.labels()) == me
    assert ProcessId.from_labels({"errata.pid": 3}) is None and ProcessId.from_labels(None) is None
    assert ProcessId.from_labels({**me.labels(), "errata.pid": "x"}) is None
    assert lost_message("errata-build", me) == f"build process {me.pid} on {me.host} is gone (killed or lost)"
