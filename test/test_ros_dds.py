"""The Fast DDS transport setting (fer_ros.ros.dds): Fast DDS parses it, and a user's own choice
is kept by every launcher; shared-memory files of dead participants are removed, live ones kept."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (run `make build`)")

from fer_ros.ros.dds import ENV_VAR, TRANSPORTS, clean_zombie_shm, large_data_env  # noqa: E402

PARTICIPANT = ("import rclpy; rclpy.init(); node = rclpy.create_node('dds_setting_check'); "
               "node.destroy_node(); rclpy.shutdown(); print('participant created')")


def participant_output(value: str) -> str:
    env = dict(os.environ, **{ENV_VAR: value, "ROS_DOMAIN_ID": str(random.randint(101, 200)), "RCUTILS_COLORIZED_OUTPUT": "0"})
    out = subprocess.run([sys.executable, "-c", PARTICIPANT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_fast_dds_accepts_the_transport_setting():
    out = participant_output(TRANSPORTS)
    assert "participant created" in out and "Wrong value" not in out, out


def test_a_misspelt_setting_is_what_fast_dds_reports():
    """The check above can fail: Fast DDS names a value it cannot parse (and falls back to DEFAULT)."""
    assert "Wrong value" in participant_output(TRANSPORTS.replace("non_blocking", "non_blockin"))


def test_a_users_own_setting_is_kept():
    assert large_data_env({ENV_VAR: "DEFAULT"})[ENV_VAR] == "DEFAULT"
    assert large_data_env({})[ENV_VAR] == TRANSPORTS


def test_zombie_shared_memory_files_go_and_live_ones_stay(tmp_path):
    """A segment whose lock nobody holds is removed with its port mutex; one whose lock is
    held (its owner alive) and files that are not Fast DDS's stay."""
    import fcntl

    dead, live = "fastdds_0123456789abcdef", "fastdds_port7413"
    for name in (dead, dead + "_el", live, live + "_el", f"sem.{live}_mutex", "other_el", "fastdds_port7411"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"sem.{dead}_mutex").write_bytes(b"x")
    with open(tmp_path / (live + "_el"), "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert clean_zombie_shm(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live, live + "_el", f"sem.{live}_mutex", "other_el", "fastdds_port7411"])


def test_a_killed_participant_leaves_files_that_the_cleaner_removes():
    """The real thing: a participant killed with SIGKILL leaves its segment in /dev/shm; a
    running one's files are never touched."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm: Fast DDS keeps no shared-memory files here")
    env = dict(os.environ, **{ENV_VAR: TRANSPORTS, "ROS_DOMAIN_ID": str(random.randint(101, 200))})
    code = ("import rclpy, sys, time; rclpy.init(); node = rclpy.create_node('zombie_check'); "
            "print('up', flush=True); time.sleep(60)")
    before = set(os.listdir("/dev/shm"))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "up"
        made = {n for n in set(os.listdir("/dev/shm")) - before if n.endswith("_el")}
        assert made, "the participants made no shared-memory segment"
        procs[0].kill()
        procs[0].wait()
        clean_zombie_shm()
        left = set(os.listdir("/dev/shm"))
        assert procs[1].poll() is None
        gone = made - left
        assert gone, "nothing of the killed participant was removed"
        assert made & left, "the live participant's files were removed too"
    finally:
        for p in procs:
            p.kill()
            p.wait()
        clean_zombie_shm()


def test_a_quiet_reader_is_renewed_after_ever_longer_waits_until_something_arrives():
    """The resubscription rule shared by the expression node and the recorder: due after `after`
    seconds of silence, then after twice as long each try (up to 64x), and back to `after` once a
    message arrived; 0 turns it off."""
    from fer_ros.ros.dds import QuietReader

    q = QuietReader(after=5.0)
    q.subscribed(100.0)
    assert q.quiet(104.9) == 0.0 and q.quiet(105.0) == 5.0
    q.renewed(105.0)
    assert q.quiet(114.9) == 0.0 and q.quiet(115.0) == 10.0  # the second try waits twice as long
    for k in range(2, 10):
        q.renewed(q.since)
    assert q.streak == 9 and q.quiet(q.since + 5.0 * 64) == 5.0 * 64  # capped at 64x
    q.received(q.since + 1.0)
    assert q.quiet(q.since + 6.0) == 5.0 and q.streak == 0  # heard something: back to the first wait
    assert q.count == 9
    off = QuietReader(after=0.0)
    off.subscribed(0.0)
    assert off.quiet(1e6) == 0.0
