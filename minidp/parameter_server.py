"""Parameter servers: synchronous averaging and asynchronous SGD, on real processes.

    X, y = minidp.data.linear_data(m=256)
    config = SGDConfig(lr=0.1, steps=60, batch_size=8)
    history = run_sync(X, y, 3, config)                  # (steps + 1, n): theta after each update
    history = run_async(X, y, 3, config, staleness=2)    # the same every run
    history, delays = run_async_free(X, y, 3, config)    # as timing has it: differs run to run
    times = time_per_round(3)                            # {"server": RoundTime, "ring": ...}

Rank 0 is the server and ranks 1..K are the workers, so K workers take K + 1 processes. The model
is the course's linear regression (minidp.linear.mse_grad): a whole run takes milliseconds, and
every difference between two runs is the algorithm's, not the noise of a big model.

Synchronous (the parameter server of Li et al., OSDI 2014): each step the server sends theta to
every worker, each returns the gradient of its share of the step's batch, and the server steps
with their mean. That is SGD on the whole batch, exactly (the tests check it).

Asynchronous (Downpour SGD, Dean et al., NeurIPS 2012): the server applies each gradient as it
arrives, and a worker computes on the parameters it last received, which the others have moved
on since: the update of step t uses a gradient taken at theta_{t - tau}. In a real run the delay
tau depends on timing (`run_async_free` measures it). `run_async` fixes it instead, tau = s for
every update, the delayed-SGD model of Agarwal & Duchi (NeurIPS 2011): the server sends theta_t
to the worker of update t + s as soon as theta_t exists, so s + 1 gradients are in flight at
once and the result depends on s alone, which is what a plot of convergence against staleness
needs. `delayed_sgd` is the same computation in one process: the reference for both servers.
"""

import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from minidp.collectives import ring_all_reduce, timed
from minidp.launch import launch
from minidp.linear import mse_grad

SERVER = 0  # the server's rank; workers are 1..K


@dataclass
class SGDConfig:
    lr: float = 0.1
    steps: int = 50  # updates the server applies
    batch_size: int = 8  # examples behind one worker's gradient
    seed: int = 0


def batch_indices(m: int, step: int, seed: int, size: int) -> Tensor:
    """Rows of an m-row data set forming batch `step`, (size,): a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(m, (size,), generator=g)


def delayed_sgd(
    X: Tensor, y: Tensor, config: SGDConfig, staleness: int = 0, batch_size: int | None = None
) -> Tensor:
    """SGD in one process where update t uses the gradient at theta_{t-s} (theta_0 while t < s).

    staleness 0 is plain SGD. Returns theta before and after every update, (steps + 1, n).
    """
    b = batch_size or config.batch_size
    thetas = [torch.zeros(X.shape[1], dtype=X.dtype)]
    for t in range(config.steps):
        rows = batch_indices(len(y), t, config.seed, b)
        grad = mse_grad(thetas[max(t - staleness, 0)], X[rows], y[rows])
        thetas.append(thetas[t] - config.lr * grad)
    return torch.stack(thetas)


# ---- Synchronous: every worker's gradient, every step, averaged


def _sync(X: Tensor, y: Tensor, config: SGDConfig) -> Tensor | None:
    rank, K, n = dist.get_rank(), dist.get_world_size() - 1, X.shape[1]
    b = config.batch_size
    theta = torch.zeros(n, dtype=X.dtype)
    if rank == SERVER:
        history, grads = [theta], torch.empty(K, n, dtype=X.dtype)  # row k: worker k + 1's
        for _ in range(config.steps):
            works = [dist.isend(theta, w) for w in range(1, K + 1)]
            works += [dist.irecv(grads[w - 1], w) for w in range(1, K + 1)]
            for work in works:
                work.wait()
            # The mean of K equal-sized batch means is the mean over the whole batch, so this is
            # the update one process would make on all K * b examples.
            theta = theta - config.lr * grads.mean(dim=0)  # a new tensor: history keeps the old
            history.append(theta)
        return torch.stack(history)
    for t in range(config.steps):
        dist.recv(theta, SERVER)
        # The step's batch of K * b rows, of which worker k takes the k-th slice of b.
        rows = batch_indices(len(y), t, config.seed, K * b)[(rank - 1) * b : rank * b]
        dist.send(mse_grad(theta, X[rows], y[rows]), SERVER)
    return None


def run_sync(X: Tensor, y: Tensor, workers: int, config: SGDConfig, timeout: float = 30) -> Tensor:
    """Train with a synchronous parameter server and K workers; theta history, (steps + 1, n)."""
    return launch(_sync, workers + 1, X, y, config, timeout=timeout)[0]


# ---- Asynchronous with a fixed staleness: reproducible


def _worker_of(t: int, K: int) -> int:
    """The worker that computes update t: round robin, so the schedule never depends on timing."""
    return 1 + t % K


def _async(X: Tensor, y: Tensor, config: SGDConfig, staleness: int) -> Tensor | None:
    rank, K, n = dist.get_rank(), dist.get_world_size() - 1, X.shape[1]
    T, s = config.steps, staleness
    if rank == SERVER:
        thetas = [torch.zeros(n, dtype=X.dtype)]
        # Updates 0..s all compute at theta_0: no update exists yet when they must start.
        sends = [dist.isend(thetas[0], _worker_of(t, K)) for t in range(min(s + 1, T))]
        grad = torch.empty(n, dtype=X.dtype)
        for t in range(T):
            dist.recv(grad, _worker_of(t, K))  # update t's gradient, however fast the others are
            thetas.append(thetas[t] - config.lr * grad)
            if t + 1 + s < T:  # theta_{t+1} is what update t + 1 + s computes at
                sends.append(dist.isend(thetas[t + 1], _worker_of(t + 1 + s, K)))
        # isend: the server never waits for a busy worker, and a worker blocked sending its
        # gradient for a later update never waits for a server blocked sending to it.
        for work in sends:
            work.wait()
        return torch.stack(thetas)
    theta = torch.empty(n, dtype=X.dtype)
    for t in range(rank - 1, T, K):  # my updates, in order: the server sends them in this order
        dist.recv(theta, SERVER)
        rows = batch_indices(len(y), t, config.seed, config.batch_size)
        dist.send(mse_grad(theta, X[rows], y[rows]), SERVER)
    return None


def run_async(
    X: Tensor, y: Tensor, workers: int, config: SGDConfig, staleness: int, timeout: float = 30
) -> Tensor:
    """Asynchronous SGD in which every gradient is `staleness` updates old; (steps + 1, n)."""
    if staleness < 0:
        raise ValueError(f"staleness must be at least 0, got {staleness}")
    return launch(_async, workers + 1, X, y, config, staleness, timeout=timeout)[0]


# ---- Asynchronous as it comes: whichever gradient arrives first is applied first


def _async_free(X: Tensor, y: Tensor, config: SGDConfig) -> tuple[Tensor, list[int]] | None:
    rank, K, n = dist.get_rank(), dist.get_world_size() - 1, X.shape[1]
    # Messages carry bookkeeping after the values. To a worker: (theta, version, job), where
    # version = updates applied so far and job < 0 means stop. Back: (gradient, version).
    job = torch.empty(n + 2, dtype=X.dtype)
    if rank != SERVER:
        while True:
            dist.recv(job, SERVER)
            if job[-1] < 0:
                return None
            rows = batch_indices(len(y), int(job[-1]), config.seed, config.batch_size)
            dist.send(torch.cat([mse_grad(job[:n], X[rows], y[rows]), job[n : n + 1]]), SERVER)
    theta = torch.zeros(n, dtype=X.dtype)
    history, delays = [theta], []
    handed_out, busy, reply = 0, 0, torch.empty(n + 1, dtype=X.dtype)

    def hand_out(worker: int) -> None:  # the next job, or stop once every update has a job
        nonlocal handed_out, busy
        number = handed_out if handed_out < config.steps else -1
        message = torch.cat([theta, torch.tensor([len(history) - 1, number], dtype=X.dtype)])
        dist.send(message, worker)
        handed_out, busy = handed_out + (number >= 0), busy + (number >= 0)

    for w in range(1, K + 1):
        hand_out(w)
    while busy:
        worker = dist.recv(reply)  # from any worker: the first to finish
        busy -= 1
        delays.append(len(history) - 1 - int(reply[-1]))  # updates applied since it read theta
        theta = theta - config.lr * reply[:n]
        history.append(theta)
        hand_out(worker)
    return torch.stack(history), delays


def run_async_free(
    X: Tensor, y: Tensor, workers: int, config: SGDConfig, timeout: float = 30
) -> tuple[Tensor, list[int]]:
    """Asynchronous SGD in arrival order: (theta history (steps + 1, n), each update's delay)."""
    return launch(_async_free, workers + 1, X, y, config, timeout=timeout)[0]


# ---- Time per round: the server's link against the ring's


def _server_round(grad: Tensor, theta: Tensor, inbox: Tensor) -> None:
    """Gradients in, parameters out: the server receives K of them and sends K back."""
    K = dist.get_world_size() - 1
    if dist.get_rank() == SERVER:
        recvs = [dist.irecv(inbox[w - 1], w) for w in range(1, K + 1)]
        for gradient, work in zip(inbox, recvs, strict=True):
            work.wait()
            # In place, one gradient at a time: a temporary (K, n) mean would add page faults
            # to every round, and this comparison is about bytes, not allocation.
            theta.add_(gradient, alpha=-0.1 / K)
        for work in [dist.isend(theta, w) for w in range(1, K + 1)]:
            work.wait()
    else:
        dist.send(grad, SERVER)
        dist.recv(theta, SERVER)


@dataclass(frozen=True)
class RoundTime:
    wall: float  # seconds per round on the slowest rank (median)
    busiest: float  # CPU seconds per round of the busiest process, all its threads (mean)


def _round_time(kind: str, numel: int, repeats: int) -> RoundTime:
    grad, theta = torch.ones(numel), torch.zeros(numel)
    inbox = torch.empty(dist.get_world_size() - 1 if dist.get_rank() == SERVER else 0, numel)

    def one_round() -> None:
        if kind == "server":
            _server_round(grad, theta, inbox)
        else:  # every worker sums the gradients, then steps on its own copy of theta
            ring_all_reduce(grad)
            theta.add_(grad, alpha=-0.1)

    timed(one_round, 2)  # warm-up: first-touch page faults, connection set-up
    # CPU time counts what this process itself does (copies into and out of its sockets, sums),
    # not the time it waits, so it stays meaningful when more processes than cores share a laptop.
    cpu = time.process_time()
    wall = statistics.median(timed(one_round, repeats))
    busiest = torch.tensor([(time.process_time() - cpu) / repeats], dtype=torch.float64)
    dist.all_reduce(busiest, op=dist.ReduceOp.MAX)
    return RoundTime(wall, busiest.item())


def time_per_round(workers: int, numel: int = 1 << 22, repeats: int = 5) -> dict[str, RoundTime]:
    """Time per round of K workers exchanging numel floats: {"server": ..., "ring": ...}.

    On a cluster each process has its own link and the busiest one sets the pace; on a laptop
    the processes share its cores, so wall time also measures how many processes there are.
    """
    server = launch(_round_time, workers + 1, "server", numel, repeats, timeout=60)[0]
    ring = launch(_round_time, workers, "ring", numel, repeats, timeout=60)[0]
    return {"server": server, "ring": ring}
