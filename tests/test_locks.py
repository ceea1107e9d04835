"""One writer per output folder: a second writer is refused with the holder named, a dead holder's lock is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from vitprune.app.cli import main
from vitprune.errors import UserError
from vitprune.outdir import LOCK, META, OutputFolder
from vitprune.discovery.records import PARTIAL, PATHS
from vitprune.files import read_jsonl

from .helpers import last_line

ARGS = ["--data", "demo", "--per-class", "4", "--topk", "2", "--steps", "4", "--batch-size", "2", "--quiet"]


def lock_path(out):
    return out / META / LOCK


def output_lock(out, command, dist=None):
    return OutputFolder(out, command, dist=dist)


def _one_line_refusal(err: str) -> None:
    err = last_line(err)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in err and "another --out" in err


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "discover"):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            with output_lock(out, "discover"):
                pass
        note = json.loads(lock_path(out).read_text())
        assert note["pid"] == os.getpid() and note["command"] == "discover" and note["started"]
    with output_lock(out, "discover"):  # released: the next writer gets it
        pass


@pytest.mark.parametrize("command", ["discover", "compress", "evaluate"])
def test_every_command_refuses_a_held_folder(model_dir, tmp_path, capsys, fashion_dir, command):
    out = tmp_path / "out"
    extra = {"discover": ARGS, "compress": ["--data", "demo", "--per-class", "2", "--sparsity", "0.5", "--criterion", "magnitude",
                                            "--compensate", "none", "--no-export", "--quiet"],
             "evaluate": ["--data", "demo", "--per-class", "2", "--criteria", "magnitude", "--compensate", "none", "--quiet"]}[command]
    with output_lock(out, "compress"):
        assert main([command, "--model", model_dir, *extra, "--out", str(out)]) == 2
    _one_line_refusal(capsys.readouterr().err)
    assert not out.exists()


def test_export_refuses_a_checkpoint_being_written(model_dir, tmp_path, capsys):
    """A checkpoint folder another process is writing (its lock held) is not read: one line naming the holder."""
    ckpt = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vitprune.outdir import OutputFolder\n"
                               "with OutputFolder(sys.argv[1], 'compress'):\n    print('held', flush=True); time.sleep(120)",
                               str(ckpt)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["export", "--model", str(ckpt)]) == 2
        err = last_line(capsys.readouterr().err)
        assert f"pid {holder.pid} on {socket.gethostname()}" in err and "another --out" in err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_two_concurrent_discover_processes(model_dir, tmp_path, fashion_dir):
    """Exactly one runs; the other exits 2 naming the holder; the finished run holds every image once."""
    out = tmp_path / "run"
    slow = [*ARGS, "--steps", "20", "--max-rows", "1"]  # one row per pass: seconds of work, time for a second writer
    cmd = [sys.executable, "-m", "vitprune", "discover", "--model", model_dir, *slow, "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / PARTIAL).exists():  # events, not the clock: a slow machine only waits longer
        assert first.poll() is None, "the first run ended before it held the folder"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # the holder, paused while it holds the lock, whatever the machine's speed
    try:
        second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait() == 0
    assert second.returncode == 2
    assert f"pid {first.pid}" in last_line(second.stderr)
    records = read_jsonl(out / PATHS)
    assert len(records) == 40 and len({r["id"] for r in records}) == 40


@pytest.mark.slow
def test_a_killed_holder_leaves_no_stale_lock(model_dir, tmp_path, fashion_dir):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vitprune", "discover", "--model", model_dir, *ARGS, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / PARTIAL).exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == proc.pid  # the dead holder's note is still there
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out), "--resume"]) == 0
    assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()  # taken over
    assert len(read_jsonl(out / PATHS)) == 40


@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_out_that_cannot_be_a_folder_is_one_line(model_dir, tmp_path, capsys, fashion_dir, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = blocker / "run" if where == "under-a-file" else blocker
    assert main(["discover", "--model", model_dir, *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    err = last_line(err)
    assert "writable folder" in err or "is a file" in err
    assert blocker.read_text() == "not a folder"


class _FakeDist:
    """Rank ``rank`` of a 2-process launch whose main process saw ``main_verdict``."""

    def __init__(self, rank, main_verdict=None):
        self.rank, self.world, self.main_verdict = rank, 2, main_verdict

    @property
    def is_main(self):
        return self.rank == 0

    def gather(self, obj):
        return [obj if self.is_main else self.main_verdict, None]


def test_every_rank_of_a_launch_gets_the_main_process_verdict(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "discover"):  # another launch holds the folder
        with pytest.raises(UserError, match="being written"):
            with output_lock(out, "discover", _FakeDist(0)):
                pass
        with pytest.raises(UserError, match="being written"):  # a non-main rank never touches the lock file itself
            with output_lock(out, "discover", _FakeDist(1, main_verdict=f"{out} is being written by another vitprune run")):
                pass
    with output_lock(out, "discover", _FakeDist(1)):  # the main process got it: the other ranks go on
        pass
