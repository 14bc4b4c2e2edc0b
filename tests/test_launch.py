"""minidp.launch: results, errors, hangs, interrupts, output, and nothing left running."""

import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import psutil
import pytest
import torch
import torch.distributed as dist

import minidp
from minidp import WorkerError, launch
from minidp.workers import GRACE_S, Workers

pytestmark = pytest.mark.usefixtures("no_orphans")


def test_results_in_rank_order_with_args_and_a_closure():
    offset = 10  # a closure over a local: fork runs it, spawn could not pickle it

    def work(scale, *, shift):
        x = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(x)
        return (dist.get_rank(), dist.get_world_size(), x.item() * scale + shift + offset)

    assert launch(work, 3, 2.0, shift=1) == [(r, 3, 3 * 2.0 + 1 + 10) for r in range(3)]


def test_world_of_one():
    assert launch(lambda: dist.get_world_size(), 1) == [1]


def test_environment_matches_torchrun():
    # setup_distributed, as code written for torchrun calls it: under launch it joins nothing
    # and finds no fault (no MASTER_ADDR: the workers met through a file)
    env = launch(lambda: minidp.setup_distributed(), 2)
    assert [(e.rank, e.local_rank, e.world_size, e.backend) for e in env] == [
        (0, 0, 2, "gloo"),
        (1, 1, 2, "gloo"),
    ]


def test_one_thread_per_worker_unless_told():
    assert launch(torch.get_num_threads, 2) == [1, 1]
    assert launch(torch.get_num_threads, 2, threads=2) == [2, 2]


def test_output_is_prefixed_by_rank(capsys):
    launch(lambda: print(f"hello from {dist.get_rank()}"), 2)
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == ["[rank 0] hello from 0", "[rank 1] hello from 1"]


def _fails_on_rank_one():
    if dist.get_rank() == 1:
        raise ValueError("boom on purpose")
    dist.barrier()  # rank 0 would wait here forever if nobody ended it


def test_a_raising_worker_raises_in_the_caller_with_its_traceback():
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        launch(_fails_on_rank_one, 3, timeout=60)
    assert time.monotonic() - start < 10
    assert info.value.rank == 1
    assert "ValueError: boom on purpose" in str(info.value)
    assert "_fails_on_rank_one" in str(info.value)  # the worker's own traceback
    assert launch(lambda: dist.get_rank(), 2) == [0, 1]  # and the next launch works at once


def _hangs():
    if dist.get_rank() == 1:
        time.sleep(120)  # never joins the all-reduce
    dist.all_reduce(torch.ones(1))


def test_a_hung_collective_times_out():
    start = time.monotonic()
    with pytest.raises(WorkerError, match="Timed out|timed out|Timeout"):
        launch(_hangs, 2, timeout=2)
    assert time.monotonic() - start < 15


def test_a_worker_killed_by_a_signal_is_reported():
    def die():
        if dist.get_rank() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(120)

    with pytest.raises(WorkerError, match="SIGKILL"):
        launch(die, 2)


def test_a_worker_killed_while_a_child_holds_its_pipes_is_reported():
    def die_leaving_a_child():
        if os.fork() == 0:  # a forked child holds copies of every pipe its parent had
            time.sleep(60)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)

    start = time.monotonic()
    with pytest.raises(WorkerError, match="SIGKILL"):
        launch(die_leaving_a_child, 1)
    assert time.monotonic() - start < 10


def test_interrupting_the_caller_ends_the_workers():
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        launch(time.sleep, 2, 120)
    timer.cancel()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _starts_a_child() -> int:
    return subprocess.Popen(["sleep", "60"]).pid  # never waited for: it would outlive the worker


def test_a_workers_children_end_with_it_and_do_not_slow_the_launch():
    launch(os.getpid, 2)  # the first launch of a process pays for imports
    start = time.monotonic()
    launch(os.getpid, 2)
    plain = time.monotonic() - start
    start = time.monotonic()
    children = launch(_starts_a_child, 2)
    took = time.monotonic() - start
    # Re-parented to init, which may reap them late (a container's init may never): dead is gone.
    deadline = time.monotonic() + 2
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in children)
    assert took < plain + 1.0, (took, plain)  # not the child's lifetime, nor a fixed wait


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def _ignores_sigterm(folder: str):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", STUBBORN])  # and so does its child
    open(os.path.join(folder, str(child.pid)), "w").close()
    if dist.get_rank() == 1:
        time.sleep(1)  # the child has set its handler by now
        raise ValueError("boom on purpose")
    time.sleep(120)


def test_workers_and_children_that_ignore_sigterm_are_killed(tmp_path):
    start = time.monotonic()
    with pytest.raises(WorkerError, match="boom on purpose"):
        launch(_ignores_sigterm, 2, str(tmp_path))
    assert time.monotonic() - start < 15
    children = [int(pid) for pid in os.listdir(tmp_path)]
    assert len(children) == 2 and not any(alive(pid) for pid in children)


INTERRUPTED = """
import os, signal, sys, time
import psutil
import minidp

def stubborn(folder):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(120)

try:
    minidp.launch(stubborn, 2, sys.argv[1])
except KeyboardInterrupt:
    alive = []
    for pid in [int(name) for name in os.listdir(sys.argv[1])]:
        try:
            alive += [pid] if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else []
        except psutil.NoSuchProcess:
            pass
    print("alive:", alive, "at", time.monotonic())
"""


def test_a_second_ctrl_c_hurries_the_clean_up_instead_of_stopping_it(tmp_path):
    script = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    script.send_signal(signal.SIGINT)
    time.sleep(0.2)  # in the grace period now, 2 s: the workers ignore SIGTERM
    second = time.monotonic()
    script.send_signal(signal.SIGINT)
    out, _ = script.communicate(timeout=60)
    assert out.startswith("alive: [] at ") and script.returncode == 0, out
    assert float(out.split()[-1]) - second < 1.0  # SIGKILL at once, not after the grace period


REAL_FORK = Workers.fork


def _second_fork_fails(self, rank, *args):
    if rank == 1:
        raise RuntimeError("no second process, on purpose")
    return REAL_FORK(self, rank, *args)


def test_fds_and_threads_stay_flat_over_failing_launches(monkeypatch):
    def failing_launch(i: int) -> None:
        with monkeypatch.context() as patch:
            if i % 2:  # a failure at start-up, with rank 0 already forked and waiting for rank 1
                patch.setattr(Workers, "fork", _second_fork_fails)
            with pytest.raises(RuntimeError, match="no second process" if i % 2 else "boom"):
                launch(_fails_on_rank_one, 2)

    me = psutil.Process()
    for i in range(2):  # what the first launches load stays loaded
        failing_launch(i)
    before = (me.num_fds(), me.num_threads(), threading.active_count())
    for i in range(20):
        failing_launch(i)
    assert (me.num_fds(), me.num_threads(), threading.active_count()) == before


def _listening_ports(pid: int) -> list[int]:
    connections = psutil.Process(pid).net_connections(kind="inet")
    return [c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN]


def test_the_workers_meet_through_a_file_not_on_a_port():
    # A TCPStore looks up the name of the address at both ends of each connection, and for
    # ::ffff:127.0.0.1 that means asking DNS: where an answer was lost, a launch took 5 s more
    # (1 launch in 15 on this project's machines; see the README).
    def look():
        store = dist.distributed_c10d._get_default_store()  # a PrefixStore over the launch's
        return _listening_ports(os.getppid()), type(store.underlying_store).__name__

    assert _listening_ports(os.getpid()) == []
    assert launch(look, 2) == [([], "FileStore")] * 2


def test_the_rendezvous_file_goes_with_the_launch(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes its folders
    # (torch may make a folder of its own there too: only the launch's are counted)
    folders = lambda: [f for f in os.listdir(tmp_path) if f.startswith("minidp-launch-")]

    assert launch(lambda: [os.listdir(tmp_path / f) for f in folders()], 2) == [[["store"]]] * 2
    assert folders() == []
    with pytest.raises(WorkerError, match="on purpose"):
        launch(_fails_on_rank_one, 2)
    with pytest.raises(WorkerError, match="Timed out|timed out|Timeout"):
        launch(_hangs, 2, timeout=1)
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="no second process"):
        patch.setattr(Workers, "fork", _second_fork_fails)
        launch(lambda: None, 2)
    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C while the workers are being ended
        launch(_fails_then_interrupts_the_clean_up, 2)
    assert folders() == []


def _fails_then_interrupts_the_clean_up():
    if dist.get_rank() == 1:  # the launcher's SIGTERM makes this rank press Ctrl-C there
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getppid(), signal.SIGINT))
    dist.barrier()
    if dist.get_rank() == 0:
        raise ValueError("on purpose")
    time.sleep(120)


def test_an_outer_jobs_rendezvous_address_does_not_reach_the_workers(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "node0")  # as in a batch script that exports them
    monkeypatch.setenv("MASTER_PORT", "29500")
    names = lambda: sorted(n for n in os.environ if n.startswith("MASTER_"))
    assert launch(names, 2) == [[], []]


def test_a_child_that_leaves_the_group_is_out_of_reach_but_holds_nothing_up():
    def start_a_session() -> int:  # the child inherits stdout: the worker's output pipe
        return subprocess.Popen(["sleep", "60"], start_new_session=True).pid

    launch(os.getpid, 1)
    fds = psutil.Process().num_fds()
    start = time.monotonic()
    (escaped,) = launch(start_a_session, 1)
    try:
        assert time.monotonic() - start < GRACE_S + 3  # the pipe it holds is not waited for
        assert psutil.Process().num_fds() == fds  # and is closed here all the same
        assert alive(escaped)  # beyond a launch: what minidp.course.reaper is for
    finally:
        os.kill(escaped, signal.SIGKILL)


def test_a_function_may_end_its_own_process_group():
    def work():
        x = torch.ones(1)
        dist.all_reduce(x)
        dist.destroy_process_group()
        return x.item()

    assert launch(work, 2) == [2.0, 2.0]


def test_file_descriptors_above_1024(capsys):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this machine allows {hard} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # select() stops at 1023
    try:
        assert launch(lambda: print(f"hello from {dist.get_rank()}"), 2) == [None, None]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sorted(capsys.readouterr().out.splitlines()) == [
        "[rank 0] hello from 0",
        "[rank 1] hello from 1",
    ]


def test_an_unpicklable_result_is_an_error_not_a_hang():
    with pytest.raises(WorkerError, match="pickle"):
        launch(lambda: threading.Lock(), 2)


def test_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        launch(print, 0)


WORKER_SCRIPT = """
import torch, torch.distributed as dist
from minidp import setup_distributed
from minidp.collectives import ring_all_reduce

env = setup_distributed(timeout_s=30)
x = torch.full((5,), float(env.rank + 1))
ring_all_reduce(x)
print(f"rank {env.rank}/{env.world_size} {env.backend} sum={x[0].item()}")
dist.destroy_process_group()
"""


def test_the_same_worker_code_runs_under_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT))
    # --standalone: a rendezvous on a free loopback port, never a fixed MASTER_PORT.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MINIDP_DEVICE="cpu")
    out = subprocess.run(cmd + [str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "rank 0/2 gloo sum=3.0" in out.stdout
    assert "rank 1/2 gloo sum=3.0" in out.stdout


def test_read_env_without_torchrun(monkeypatch):
    for name in ["RANK", "LOCAL_RANK", "WORLD_SIZE"]:
        monkeypatch.delenv(name, raising=False)
    env = minidp.read_env()
    assert (env.rank, env.local_rank, env.world_size, env.is_main) == (0, 0, 1, True)
