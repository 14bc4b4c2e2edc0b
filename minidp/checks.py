"""Exercise checkers: run a learner's `my_*` function against minidp's reference and say whether
it is correct, incorrect (with a hint naming the likely mistake), or not attempted yet.

In a notebook:

    def my_mse(theta, X, y):
        raise NotImplementedError   # the learner replaces this
    minidp.checks.check("01.mse", my_mse)          # -> "not attempted"

Every call is also recorded in `RESULTS`, which `python -m minidp.assignments grade` reads from
the notebook's kernel to write the grade report. A checker is a function `fn -> CheckResult`,
registered under an exercise id "NN.name" (NN: the notebook); most are built with `compare`,
which tries the learner's function on several inputs and recognises typical wrong answers by
computing them too.
"""

import multiprocessing
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from minidp import data, model, model_parallel
from minidp.ddp import DistributedDataParallel
from minidp.launch import WorkerError, launch
from minidp.parameter_server import batch_indices

CORRECT, INCORRECT, NOT_ATTEMPTED = "correct", "incorrect", "not attempted"


@dataclass(frozen=True)
class CheckResult:
    exercise: str
    status: str  # CORRECT, INCORRECT or NOT_ATTEMPTED
    hint: str = ""

    @property
    def correct(self) -> bool:
        return self.status == CORRECT

    def __str__(self) -> str:
        mark = {CORRECT: "✅", INCORRECT: "❌", NOT_ATTEMPTED: "⏳"}[self.status]
        return f"{mark} {self.exercise}: {self.status}" + (f". {self.hint}" if self.hint else "")

    def _repr_html_(self) -> str:
        colour = {CORRECT: "#1a7f37", INCORRECT: "#cf222e", NOT_ATTEMPTED: "#9a6700"}[self.status]
        return f'<div style="color:{colour};font-weight:600">{self}</div>'


# A wrong answer we can predict: how to compute it, and what to tell the learner who gave it.
Mistake = tuple[Callable, str]

CHECKERS: dict[str, Callable[[Callable], CheckResult]] = {}
RESULTS: list[CheckResult] = []


def checker(exercise: str):
    """Register the decorated function as the checker of `exercise`."""

    def register(fn: Callable[[Callable], CheckResult]) -> Callable[[Callable], CheckResult]:
        CHECKERS[exercise] = fn
        return fn

    return register


def check(exercise: str, fn: Callable) -> CheckResult:
    """Check the learner's `fn` for `exercise`, record the result, and return it (it displays)."""
    if exercise not in CHECKERS:
        raise KeyError(f"no checker called {exercise!r}; known: {', '.join(sorted(CHECKERS))}")
    result = CHECKERS[exercise](fn)
    RESULTS.append(result)
    return result


def report() -> dict[str, str]:
    """The latest status of each exercise checked in this session: {exercise: status}."""
    return {r.exercise: r.status for r in RESULTS}


def same(a, b, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether two results agree: tensors, numbers, or (nested) lists and tuples of them."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    try:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
    except (TypeError, ValueError, RuntimeError):
        return False
    if a.shape != b.shape:
        return False
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True)


def compare(
    exercise: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[tuple],
    mistakes: Sequence[Mistake] = (),
    generic_hint: str = "compare your result with the formula above on a small example",
) -> CheckResult:
    """Call fn and reference on each case (a tuple of arguments) and judge fn.

    Inputs are cloned for each call, so a function that modifies its arguments cannot corrupt
    the next comparison. When fn's answer matches a known mistake, that mistake's hint is given.
    """
    for args in cases:
        try:
            got = fn(*_cloned(args))
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "replace the `raise NotImplementedError`")
        except Exception as e:  # the learner's bug: report it, never crash the notebook
            return CheckResult(exercise, INCORRECT, f"it raised {type(e).__name__}: {e}")
        if same(got, reference(*_cloned(args))):
            continue
        for wrong, hint in mistakes:
            if same(got, wrong(*_cloned(args))):
                return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, INCORRECT, generic_hint)
    return CheckResult(exercise, CORRECT)


def _cloned(args: tuple) -> tuple:
    return tuple(_clone(a) for a in args)


def _clone(a):
    # Lists too: a learner scaling a list of gradients in place must not corrupt the reference's.
    if isinstance(a, torch.Tensor):
        return a.clone()
    if isinstance(a, list | tuple):
        return type(a)(_clone(x) for x in a)
    return a


# ---- 00 welcome: is this machine ready for the course? And a first exercise, to meet the checks.


@dataclass(frozen=True)
class Requirement:
    """One thing the course needs (or can use, when not required), and whether it is here."""

    what: str
    ok: bool
    detail: str  # what was found, or what to do about it
    required: bool = True


@dataclass(frozen=True)
class Environment:
    """The answer of check_environment(): prints one line per requirement, ✅, ❌ or ➖."""

    requirements: list[Requirement]

    @property
    def ok(self) -> bool:
        """Whether every required item is there (optional ones, like a GPU, do not count)."""
        return all(r.ok for r in self.requirements if r.required)

    def __str__(self) -> str:
        return "\n".join(
            f"{'✅' if r.ok else '❌' if r.required else '➖'} {r.what}: {r.detail}"
            for r in self.requirements
        )

    def _repr_html_(self) -> str:
        return f"<pre>{self}</pre>"


def _package(name: str, minimum: tuple[int, int], purpose: str) -> Requirement:
    """An installed package at `minimum` version or newer; its version, or how to get it."""
    what = f"{name} ≥ {minimum[0]}.{minimum[1]}"
    try:
        found = version(name)
    except PackageNotFoundError:
        return Requirement(what, False, f"missing ({purpose}): pip install {name}")
    ok = tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) >= minimum
    return Requirement(what, ok, found if ok else f"{found} is too old: pip install -U {name}")


def _memory_gb() -> float | None:
    try:  # total physical memory (Linux, macOS); a container's own limit may be lower
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def check_environment() -> Environment:
    """What the course needs on this machine, each item found or missing, saying what to do."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_gb()
    # device_count asks NVML, not CUDA itself, so the workers minidp.launch forks later can still
    # start cleanly; torch.cuda.is_available() would initialise CUDA in this process.
    gpus = torch.cuda.device_count()
    gloo = dist.is_available() and dist.is_gloo_available()
    fork = "fork" in multiprocessing.get_all_start_methods()
    return Environment(
        [
            Requirement("Python ≥ 3.10", sys.version_info >= (3, 10), platform.python_version()),
            _package("torch", (2, 4), "the course runs on it"),
            Requirement("gloo", gloo, "torch.distributed's CPU backend, which the workers use"),
            Requirement("fork", fork, "minidp.launch forks its workers; on Windows use WSL 2"),
            Requirement("CPU cores", bool(cores), f"{cores}; with 2 or more, workers run at once"),
            Requirement(
                "memory ≥ 1.5 GB",
                memory is None or memory >= 1.5,
                "unknown" if memory is None else f"{memory:.1f} GB",
            ),
            _package("matplotlib", (3, 7), "it draws the figures"),
            _package("ipywidgets", (8, 0), "it draws the sliders"),
            Requirement(
                "GPU",
                gpus > 0,
                f"{gpus} CUDA device(s), for the trainer; the notebooks' workers use the CPU"
                if gpus
                else "none, and none is needed: all runs on CPU",
                required=False,
            ),
        ]
    )


@checker("00.mean")
def _check_mean(fn: Callable) -> CheckResult:
    cases = [(torch.tensor([1.0, 2.0, 6.0]),), (torch.arange(10.0) ** 2,)]
    mistakes = [
        (lambda x: x.sum(), "that is the sum: divide it by the number of entries"),
        (lambda x: x.sum() / (len(x) - 1), "divide by the number of entries n, not n - 1"),
    ]
    return compare("00.mean", fn, lambda x: x.mean(), cases, mistakes)


# ---- 01 loss


def _linear_cases() -> list[tuple]:
    """(theta, X, y) of a few sizes; m is never 2, where forgetting 1/m and 1/2 would agree."""
    cases = []
    for m, n, seed in ((7, 2, 1), (12, 3, 2), (30, 2, 3)):
        g = torch.Generator().manual_seed(seed)
        X, y = data.linear_data(m, theta=tuple(torch.randn(n, generator=g).tolist()), seed=seed)
        cases.append((torch.randn(n, generator=g), X, y))
    return cases


@checker("01.mse")
def _check_mse(fn: Callable) -> CheckResult:
    r = lambda theta, X, y: X @ theta - y  # residuals, (m,)
    mistakes = [
        (lambda t, X, y: (r(t, X, y) ** 2).sum() / 2, "J is a mean: divide by m as well"),
        (lambda t, X, y: (r(t, X, y) ** 2).mean(), "J has a factor 1/2 in front of the mean"),
        (lambda t, X, y: (r(t, X, y) ** 2).sum(), "divide the sum of squares by 2m"),
        (
            lambda t, X, y: (r(t, X, y) ** 2).sum() / 2 * len(y),
            "`/ 2 * m` multiplies by m: write `/ (2 * m)`",
        ),
        (lambda t, X, y: r(t, X, y).mean() / 2, "square each residual before averaging"),
    ]
    return compare("01.mse", fn, model.mse_loss, _linear_cases(), mistakes)


def _token_cases() -> list[tuple]:
    """(logits (N, V), targets (N,)); the last has logits in the hundreds, where exp overflows."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(5, 7, generator=g), torch.randint(7, (5,), generator=g)),
        (3 * torch.randn(12, 256, generator=g), torch.randint(256, (12,), generator=g)),
        (200 * torch.randn(6, 9, generator=g), torch.randint(9, (6,), generator=g)),
    ]


@checker("01.cross_entropy")
def _check_cross_entropy(fn: Callable) -> CheckResult:
    pick = lambda values, t: values.gather(-1, t[:, None]).squeeze(-1)  # each row's target entry
    log_p = lambda z: z.log_softmax(-1)
    mistakes = [
        (lambda z, t: pick(log_p(z), t).mean(), "the loss is -log p: you forgot the minus sign"),
        (lambda z, t: -pick(log_p(z), t).sum(), "average over the N positions instead of summing"),
        (lambda z, t: -pick(z.log_softmax(0), t).mean(), "normalise over the vocabulary: dim=-1"),
        (lambda z, t: -pick(z.softmax(-1), t).mean(), "take the log of the probability"),
        (lambda z, t: -pick(z, t).mean(), "turn logits into log-probabilities: z - logsumexp(z)"),
        (lambda z, t: -log_p(z).mean(), "use only each row's target entry, not every entry"),
        (
            lambda z, t: -pick(z.exp() / z.exp().sum(-1, keepdim=True), t).log().mean(),
            "exp overflows for large logits: use z - torch.logsumexp(z, dim=-1, keepdim=True)",
        ),
        (
            lambda z, t: -pick(z.softmax(-1), t).log().mean(),
            "log(softmax) gives log(0) = -inf for large logits: use z - logsumexp(z)",
        ),
    ]
    return compare("01.cross_entropy", fn, model.cross_entropy, _token_cases(), mistakes)


# ---- 02 gradient descent


@checker("02.mse_grad")
def _check_mse_grad(fn: Callable) -> CheckResult:
    g = lambda theta, X, y: X.T @ (X @ theta - y)  # the sum over examples, (n,)
    mistakes = [
        (lambda t, X, y: g(t, X, y), "J is a mean, so its gradient has a factor 1/m"),
        (lambda t, X, y: 2 * g(t, X, y) / len(y), "the 1/2 in J cancels the 2 from the square"),
        (lambda t, X, y: -g(t, X, y) / len(y), "sign error: the residual is h(x) - y"),
        (lambda t, X, y: g(t, X, y) / (2 * len(y)), "the 2 from the square cancels J's 1/2"),
    ]
    return compare("02.mse_grad", fn, model.mse_grad, _linear_cases(), mistakes)


@checker("02.gd_step")
def _check_gd_step(fn: Callable) -> CheckResult:
    step = lambda t, X, y, lr: t - lr * model.mse_grad(t, X, y)
    grad = lambda t, X, y, lr: model.mse_grad(t, X, y)
    mistakes = [
        (lambda t, X, y, lr: t + lr * grad(t, X, y, lr), "step against the gradient: θ - α ∇J"),
        (lambda t, X, y, lr: t - grad(t, X, y, lr), "multiply the gradient by the learning rate"),
        (lambda t, X, y, lr: lr * grad(t, X, y, lr), "return the new θ, not the step α ∇J"),
        (grad, "return the new θ = θ - α ∇J, not the gradient"),
    ]
    cases = [(*case, lr) for case, lr in zip(_linear_cases(), (0.1, 0.05, 0.3), strict=True)]
    return compare("02.gd_step", fn, step, cases, mistakes)


@checker("02.gradient_descent")
def _check_gradient_descent(fn: Callable) -> CheckResult:
    path = model.gradient_descent
    mistakes = [
        (lambda t, X, y, lr, s: path(t, X, y, lr, s)[1:], "include the start: steps + 1 rows"),
        (lambda t, X, y, lr, s: path(t, X, y, lr, s + 1), "that is one step too many"),
        (lambda t, X, y, lr, s: path(t, X, y, lr, s)[-1], "return the whole path, not the end"),
        (
            lambda t, X, y, lr, s: path(t, X, y, lr, s)[-1].expand(s + 1, -1),
            "every row is the last θ: you updated θ in place after storing it; store a copy",
        ),
        (lambda t, X, y, lr, s: path(t, X, y, -lr, s), "step against the gradient: θ - α ∇J"),
    ]
    lrs, steps = (0.1, 0.05, 0.2), (5, 3, 8)
    cases = [(*case, lrs[i], steps[i]) for i, case in enumerate(_linear_cases())]
    return compare("02.gradient_descent", fn, path, cases, mistakes)


# ---- 03 gradient averaging


def _worker_grads(theta: Tensor, X: Tensor, y: Tensor, K: int) -> list[Tensor]:
    """Each of K workers' gradient on its shard, rows [r m/K, (r+1) m/K) of (X, y)."""
    shard = lambda t, r: data.rank_slice(t, r, K)
    return [model.mse_grad(theta, shard(X, r), shard(y, r)) for r in range(K)]


def _sharded_cases() -> list[tuple]:
    """(theta, X, y, K) with m divisible by K; K * K is never m, so /K twice and /m differ."""
    _, m12, m30 = _linear_cases()  # (theta, X, y) with m = 12 and m = 30
    return [(*m12, 3), (*m30, 5), (*m30, 2)]


@checker("03.worker_grads")
def _check_worker_grads(fn: Callable) -> CheckResult:
    mistakes = [
        (
            lambda t, X, y, K: [model.mse_grad(t, X[r::K], y[r::K]) for r in range(K)],
            "rank r takes the contiguous rows [r m/K, (r+1) m/K), as minidp.data.rank_slice does",
        ),
        (
            lambda t, X, y, K: [g / K for g in _worker_grads(t, X, y, K)],
            "each worker's loss is the mean over its own m/K examples: divide by m/K, not m",
        ),
        (
            lambda t, X, y, K: [g * len(y) / K for g in _worker_grads(t, X, y, K)],
            "each worker's loss is a mean, not a sum: divide by its m/K examples",
        ),
        (
            lambda t, X, y, K: [model.mse_grad(t, X, y)] * K,
            "each worker sees only its shard of the data, not all of it",
        ),
    ]
    return compare("03.worker_grads", fn, _worker_grads, _sharded_cases(), mistakes)


@checker("03.weighted_average")
def _check_weighted_average(fn: Callable) -> CheckResult:
    g = torch.Generator().manual_seed(3)
    cases = [
        ([torch.randn(2, generator=g) for _ in range(3)], [2, 5, 9]),
        ([torch.randn(3, generator=g) for _ in range(4)], [10, 30, 60, 20]),
        ([torch.randn(2, generator=g) for _ in range(2)], [4, 4]),
    ]
    weighted_sum = lambda grads, sizes: sum(m * gk for m, gk in zip(sizes, grads, strict=True))
    mistakes = [
        (
            lambda grads, sizes: torch.stack(grads).mean(0),
            "a plain mean treats unequal shards alike: weight shard k by m_k / m",
        ),
        (weighted_sum, "divide by the total number of examples m = sum of the m_k"),
        (lambda grads, sizes: sum(grads), "that is a sum: weight each shard by m_k / m"),
        (
            lambda grads, sizes: weighted_sum(grads, sizes) / (sum(sizes) * len(sizes)),
            "the weights m_k / m already sum to 1: do not also divide by K",
        ),
    ]
    return compare("03.weighted_average", fn, model.average_gradients, cases, mistakes)


@checker("03.dp_step")
def _check_dp_step(fn: Callable) -> CheckResult:
    def stepped(theta, X, y, K, lr, combine):
        return theta - lr * combine(torch.stack(_worker_grads(theta, X, y, K)), K, len(y))

    reference = lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.mean(0))
    mistakes = [
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.sum(0)),
            "an all-reduce sums the K gradients: divide the sum by K",
        ),
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.sum(0) / m),
            "divide the sum by the number of workers K, not of examples m",
        ),
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G.mean(0) / K),
            "you divided by K twice: the mean of the K gradients is already the average",
        ),
        (
            lambda t, X, y, K, lr: stepped(t, X, y, K, lr, lambda G, K, m: G[0]),
            "that is worker 0's gradient alone: average all K workers' gradients",
        ),
        (lambda t, X, y, K, lr: reference(t, X, y, K, -lr), "step against the gradient"),
        (lambda t, X, y, K, lr: reference(t, X, y, K, 1.0), "multiply by the learning rate"),
    ]
    cases = [(*case, lr) for case, lr in zip(_sharded_cases(), (0.1, 0.05, 0.2), strict=True)]
    return compare("03.dp_step", fn, reference, cases, mistakes)


# ---- 04 processes and collectives: checkers that run the learner's function on real processes


_SKIPPED = "not attempted"  # what a worker returns when the learner's function is still a stub
# Seconds a worker may wait for a message (and for the others to start) before the check gives
# up: short enough that a deadlock is a verdict, not a hung cell; long enough that starting 4
# processes on a busy 1-core Binder does not time out.
_TIMEOUT_S = 8.0
_HANG_HINT = (
    "with {p} ranks a rank waited {t:g} s for a message that never came. A blocking send waits for "
    "its matching recv: if every rank sends first, none ever receives (post the receive first "
    "with dist.irecv, or use dist.isend); and every send needs a recv with the matching rank"
)


def _learner_call(fn: Callable, *args):
    """Call the learner's fn inside a worker; a stub's NotImplementedError becomes a marker."""
    try:
        return fn(*args)
    except NotImplementedError:
        return _SKIPPED


def _on_workers(exercise: str, world_size: int, worker: Callable, *args) -> list | CheckResult:
    """Run worker(*args) on world_size processes: their results, or what a failure means.

    A short timeout turns a learner's deadlock into a verdict in seconds, never a hung cell; a
    learner's exception is printed as that rank's own traceback before the verdict.
    """
    try:
        results = launch(worker, world_size, *args, timeout=_TIMEOUT_S)
    except WorkerError as e:
        if "NotImplementedError" in str(e):
            return CheckResult(exercise, NOT_ATTEMPTED, "replace the `raise NotImplementedError`")
        # A deadlocked rank times out; its peer may instead see the connection close first.
        if "timed out" in str(e).lower() or "Connection closed by peer" in str(e):
            return CheckResult(exercise, INCORRECT, _HANG_HINT.format(p=world_size, t=_TIMEOUT_S))
        print(e)  # the worker's traceback: the line of the learner's code that failed
        last = str(e).strip().splitlines()[-1]
        return CheckResult(exercise, INCORRECT, f"with {world_size} ranks, rank {e.rank}: {last}")
    if any(isinstance(result, str) and result == _SKIPPED for result in results):
        return CheckResult(exercise, NOT_ATTEMPTED, "replace the `raise NotImplementedError`")
    return results


def _rank_tensor(rank: int, n: int, seed: int = 0) -> Tensor:
    """Rank `rank`'s input for a check: n small integers, as floats, so every sum is exact."""
    g = torch.Generator().manual_seed(1000 * seed + 10 * n + rank)
    return torch.randint(-9, 10, (n,), generator=g).float()


def _judge(exercise: str, got: list, expected: list, mistakes: Sequence[tuple]) -> CheckResult:
    """Correct if got equals expected; else the hint of the first mistake whose result it equals."""
    if same(got, expected):
        return CheckResult(exercise, CORRECT)
    for wrong, hint in mistakes:
        if wrong is not None and same(got, wrong):
            return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, INCORRECT, "compare with the picture above on 3 ranks")


def _exchange_worker(fn: Callable, n: int) -> Tensor | str:
    return _learner_call(fn, _rank_tensor(dist.get_rank(), n))


@checker("04.exchange")
def _check_exchange(fn: Callable) -> CheckResult:
    for p, n in ((2, 5), (3, 4), (4, 3)):
        got = _on_workers("04.exchange", p, _exchange_worker, fn, n)
        if isinstance(got, CheckResult):
            return got
        xs = [_rank_tensor(r, n) for r in range(p)]
        mistakes = [
            (
                [xs[(r + 1) % p] for r in range(p)],
                "you received from the right: the tensors "
                "move r → r + 1, so send to (r + 1) % p and receive from (r - 1) % p",
            ),
            (xs, "each rank returned its own tensor: return the buffer you received into"),
            (
                [torch.zeros(n)] * p,
                "you returned the buffer before the message arrived: "
                "wait() on the irecv's request first",
            ),
        ]
        result = _judge("04.exchange", got, [xs[(r - 1) % p] for r in range(p)], mistakes)
        if not result.correct:
            return result
    return CheckResult("04.exchange", CORRECT)


def _in_place_broadcast_worker(fn: Callable, n: int, src: int) -> Tensor | str:
    x = _rank_tensor(dist.get_rank(), n)
    return _SKIPPED if _learner_call(fn, x, src) is _SKIPPED else x


@checker("04.broadcast")
def _check_broadcast(fn: Callable) -> CheckResult:
    for p, n, src in ((3, 4, 0), (3, 5, 2), (2, 3, 1), (4, 2, 1)):
        got = _on_workers("04.broadcast", p, _in_place_broadcast_worker, fn, n, src)
        if isinstance(got, CheckResult):
            return got
        xs = [_rank_tensor(r, n) for r in range(p)]
        mistakes = [
            ([xs[0]] * p, "the source is rank `src`, not always rank 0"),
            (
                xs,
                "x is unchanged on the receivers: receive into x itself (dist.recv(x, src)), "
                "since a broadcast works in place",
            ),
        ]
        result = _judge("04.broadcast", got, [xs[src]] * p, mistakes)
        if not result.correct:
            return result
    return CheckResult("04.broadcast", CORRECT)


# ---- 05 parameter server and async


def _delayed_sgd(grad: Callable, theta0: Tensor, lr: float, steps: int, s: int) -> Tensor:
    """theta_{t+1} = theta_t - lr grad(theta_{t-s}, t), reading theta_0 while t < s."""
    thetas = [theta0]
    for t in range(steps):
        thetas.append(thetas[t] - lr * grad(thetas[max(t - s, 0)], t))
    return torch.stack(thetas)


def _stale_base(grad: Callable, theta0: Tensor, lr: float, steps: int, s: int) -> Tensor:
    thetas = [theta0]  # the mistake: stepping from the stale parameters, not the current ones
    for t in range(steps):
        old = thetas[max(t - s, 0)]
        thetas.append(old - lr * grad(old, t))
    return torch.stack(thetas)


def _linear_grad(seed: int) -> Callable:
    """grad(theta, t): the gradient of update t's batch of 4 rows of a small linear data set."""
    X, y = data.linear_data(24, theta=(1.0, -2.0, 0.5), seed=seed)

    def grad(theta: Tensor, t: int) -> Tensor:
        rows = batch_indices(len(y), t, seed, 4)
        return model.mse_grad(theta, X[rows], y[rows])

    return grad


@checker("05.delayed_sgd")
def _check_delayed_sgd(fn: Callable) -> CheckResult:
    cases = [
        (_linear_grad(1), torch.zeros(3), 0.1, 8, 2),
        (_linear_grad(2), torch.tensor([0.5, 1.0, -1.0]), 0.05, 10, 3),
        (_linear_grad(3), torch.zeros(3), 0.1, 6, 0),
    ]
    ref = _delayed_sgd
    mistakes = [
        (
            lambda g, th, lr, T, s: ref(g, th, lr, T, 0),
            "the gradient of update t is taken at "
            "θ_{t-s}, the parameters of s updates ago, not at the current θ_t",
        ),
        (
            lambda g, th, lr, T, s: ref(g, th, lr, T, s + 1),
            "off by one: update t reads θ_{t-s}, so with s = 0 it is plain SGD",
        ),
        (
            lambda g, th, lr, T, s: ref(g, th, lr, T, max(s - 1, 0)),
            "off by one: update t reads θ_{t-s}, so with s = 0 it is plain SGD",
        ),
        (
            _stale_base,
            "only the gradient is stale: the server applies it to its current θ_t, "
            "θ_{t+1} = θ_t - α g(θ_{t-s})",
        ),
        (lambda g, th, lr, T, s: ref(g, th, lr, T, s)[1:], "include θ_0: return steps + 1 rows"),
        (lambda g, th, lr, T, s: ref(g, th, lr, T, s)[-1], "return every θ, (steps + 1, n)"),
    ]
    result = compare("05.delayed_sgd", fn, ref, cases, mistakes)
    if "IndexError" in result.hint:  # thetas[t - s] with t < s: before the list's start
        hint = "while t < s there is no θ_{t-s}: read θ_0, which every worker starts from"
        return CheckResult("05.delayed_sgd", INCORRECT, f"{hint} ({result.hint})")
    return result


@checker("05.round_bytes")
def _check_round_bytes(fn: Callable) -> CheckResult:
    server = lambda K, n: 2 * K * n
    ring = lambda K, n: 4 * (K - 1) / K * n
    cases = [(2, 1000), (3, 600), (4, 4096), (8, 1 << 20)]
    mistakes = [
        (
            lambda K, n: (K * n, ring(K, n)),
            "the server both receives K gradients and sends K copies of θ: count bytes in and out",
        ),
        (
            lambda K, n: (server(K, n), ring(K, n) / 2),
            "a ring rank receives as much as it sends: count bytes in and out",
        ),
        (lambda K, n: (K * n, ring(K, n) / 2), "count bytes in and out, for both"),
        (
            lambda K, n: (server(K, n), 4 * (K - 1) * n),
            "each ring step moves one chunk of n/K bytes, not the whole tensor",
        ),
        (
            lambda K, n: (server(K, n), 2 * (K - 1) / K * n),
            "the ring has two phases, "
            "reduce-scatter and all-gather, each K - 1 steps; count bytes in and out",
        ),
        (
            lambda K, n: (server(K, n), 4 * K / K * n),
            "a ring of K ranks takes K - 1 steps per phase, not K",
        ),
    ]
    return compare("05.round_bytes", fn, lambda K, n: (server(K, n), ring(K, n)), cases, mistakes)


# ---- 06 all-reduce


def _ring_rs_simulated(
    xs: list[Tensor],
    direction: int = 1,
    add: bool = True,
    send_shift: int = 0,
    into_shift: int = -1,
) -> list[Tensor] | None:
    """Every rank's x after p - 1 steps of a ring reduce-scatter, right or wrong, in one process.

    At step s rank r sends chunk (r - s + send_shift) % p to rank r + direction, and adds (or
    copies) what arrives into chunk (r - s + into_shift) % p. The defaults are the right ring;
    None where a wrong one would fail on chunks of different sizes.
    """
    p, xs = len(xs), [x.clone() for x in xs]
    for s in range(p - 1):
        sent = [x.tensor_split(p)[(r - s + send_shift) % p].clone() for r, x in enumerate(xs)]
        for r, x in enumerate(xs):
            arrived, into = sent[(r - direction) % p], x.tensor_split(p)[(r - s + into_shift) % p]
            if arrived.shape != into.shape:
                return None
            into.add_(arrived) if add else into.copy_(arrived)
    return xs


def _rs_worker(fn: Callable, n: int) -> Tensor | str:
    x = _rank_tensor(dist.get_rank(), n, seed=6)
    return _SKIPPED if _learner_call(fn, x) is _SKIPPED else x


def _owned(xs: list[Tensor] | None, shift: int = 1) -> list[Tensor] | None:
    """Chunk (r + shift) % p of each rank's x: what rank r owns after a reduce-scatter."""
    if xs is None:
        return None
    return [x.tensor_split(len(xs))[(r + shift) % len(xs)] for r, x in enumerate(xs)]


_RS_MISTAKES = [
    (
        dict(add=False),
        "you copied what arrived over your chunk: add it to your own values "
        "instead (chunk += received), which is what makes it a sum",
    ),
    (
        dict(direction=-1),
        "you sent to the left and received from the right: the ring runs "
        "r → r + 1, so send to (r + 1) % p and receive from (r - 1) % p",
    ),
    (
        dict(into_shift=0),
        "wrong chunk: at step s add what arrives into chunk (r - s - 1) % p, "
        "the one your left neighbour sent, not chunk (r - s) % p that you just sent",
    ),
    (
        dict(send_shift=-1, into_shift=-1),
        "wrong chunk: at step s send chunk (r - s) % p (your "
        "own chunk r at step 0) and add what arrives into chunk (r - s - 1) % p",
    ),
]


@checker("06.ring_reduce_scatter")
def _check_ring_reduce_scatter(fn: Callable) -> CheckResult:
    exercise = "06.ring_reduce_scatter"
    # First sizes p divides, then sizes it does not: a ring right on the first and wrong on the
    # second has one mistake left, and the hint can name it.
    cases = [(2, 8), (3, 12), (4, 8), (3, 10), (4, 7), (2, 5), (4, 6)]
    for p, n in cases:
        got = _on_workers(exercise, p, _rs_worker, fn, n)
        if isinstance(got, CheckResult) and got.status == NOT_ATTEMPTED:
            return got
        xs = [_rank_tensor(r, n, seed=6) for r in range(p)]
        expected = _owned([sum(xs)] * p)
        if not isinstance(got, CheckResult) and same(_owned(got), expected):
            continue
        if n % p:  # right on every size p divides: the uneven chunks are what is left
            why = got.hint if isinstance(got, CheckResult) else "some sums are wrong"
            return CheckResult(exercise, INCORRECT, _UNEVEN_HINT.format(n=n, p=p, why=why))
        if isinstance(got, CheckResult):
            return got
        if same(got, xs):
            hint = "x is unchanged: add into the chunks of x itself (x.tensor_split(p) are views)"
            return CheckResult(exercise, INCORRECT, hint)
        if same(_owned(got, shift=0), _owned([sum(xs)] * p, shift=0)):
            hint = (
                "your ring sums, but rank r ends with chunk r: send your own chunk r at step 0, "
                "so that rank r ends with chunk (r + 1) % p, where the all-gather starts"
            )
            return CheckResult(exercise, INCORRECT, hint)
        mistakes = [(_owned(_ring_rs_simulated(xs, **how)), hint) for how, hint in _RS_MISTAKES]
        return _judge(exercise, _owned(got), expected, mistakes)
    return CheckResult(exercise, CORRECT)


_UNEVEN_HINT = (
    "right when p divides the size, wrong for {n} elements on {p} ranks: split x with "
    "x.tensor_split(p), whose chunks differ by at most one element, and receive into a buffer "
    "the size of the chunk that arrives. ({why})"
)


@checker("06.ring_seconds")
def _check_ring_seconds(fn: Callable) -> CheckResult:
    ring = lambda n, p, a, b: 2 * (p - 1) * a + 2 * (p - 1) / p * n * b
    cases = [(1e6, 4, 1e-4, 1e-9), (4e3, 8, 5e-5, 2e-9), (3e7, 3, 2e-4, 1e-9), (1e5, 2, 1e-5, 1e-8)]
    mistakes = [
        (
            lambda n, p, a, b: ring(n, p, a, b) / 2,
            "that is one phase: the all-reduce is a "
            "reduce-scatter and an all-gather, p - 1 steps each",
        ),
        (
            lambda n, p, a, b: 2 * (p - 1) * (a + n * b),
            "each step moves one chunk of n/p bytes, "
            "not the whole message (that is the naive all-reduce's cost)",
        ),
        (
            lambda n, p, a, b: 2 * p * a + 2 * n * b,
            "a ring of p ranks takes p - 1 steps per phase, not p",
        ),
        (lambda n, p, a, b: 2 * (p - 1) / p * n * b, "every step also pays the latency α"),
        (lambda n, p, a, b: 2 * (p - 1) * a, "every byte also costs β: add the bandwidth term"),
        (
            lambda n, p, a, b: 2 * (p - 1) * a + (p - 1) / p * n * b,
            "both phases move bytes: 2(p - 1)/p · n · β",
        ),
    ]
    return compare("06.ring_seconds", fn, ring, cases, mistakes)


# ---- 07 DDP by hand: the learner's start broadcast and gradient averaging, on real processes


class _Normed(torch.nn.Module):
    """Two layers around a BatchNorm, whose running statistics are buffers, not parameters."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(3, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.out = torch.nn.Linear(4, 2)


def _rank_start(rank: int) -> _Normed:
    """The model as rank `rank` builds it on its own: its own random parameters and buffers."""
    torch.manual_seed(700 + rank)
    net = _Normed()
    with torch.no_grad():
        net.norm.running_mean.normal_()
        net.norm.running_var.uniform_(0.5, 2.0)
        net.norm.num_batches_tracked.fill_(3 * rank + 1)
    return net


def _state(net: torch.nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in net.state_dict().items()}


def _broadcast_worker(fn: Callable) -> dict[str, Tensor] | str:
    net = _rank_start(dist.get_rank())
    return _SKIPPED if _learner_call(fn, net) is _SKIPPED else _state(net)


@checker("07.broadcast_parameters")
def _check_broadcast_parameters(fn: Callable) -> CheckResult:
    exercise, p = "07.broadcast_parameters", 3
    got = _on_workers(exercise, p, _broadcast_worker, fn)
    if isinstance(got, CheckResult):
        return got
    starts = [_state(_rank_start(r)) for r in range(p)]
    names = list(starts[0])
    params = [name for name, _ in _Normed().named_parameters()]
    right = {name for name in names if all(same(g[name], starts[0][name]) for g in got)}
    if len(right) == len(names):
        return CheckResult(exercise, CORRECT)
    floats = [name for name in names if starts[0][name].is_floating_point()]
    total = lambda name: sum(s[name] for s in starts)
    if all(same(g[name], total(name) / p) for g in got for name in floats):
        hint = (
            "every rank holds the average of the K starts: equal, but not rank 0's, and an "
            "average of K random initialisations is shrunk by about √K; broadcast rank 0's instead"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if all(same(g[name], total(name)) for g in got for name in floats):
        hint = "an all-reduce sums the starts: broadcast copies rank 0's (dist.broadcast, src=0)"
        return CheckResult(exercise, INCORRECT, hint)
    for src in range(1, p):
        if all(same(g[name], starts[src][name]) for g in got for name in names):
            return CheckResult(exercise, INCORRECT, f"every rank has rank {src}'s: use src=0")
    if all(same(g[name], s[name]) for g, s in zip(got, starts, strict=True) for name in names):
        hint = (
            "every rank kept its own start. Broadcast each tensor itself, in place: "
            "dist.broadcast(p.data, src=0); broadcasting a copy (p.clone(), torch.cat) leaves "
            "the model unchanged"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if set(params) <= right:
        hint = (
            "the parameters match rank 0's, but the buffers (BatchNorm's running statistics) "
            "are each rank's own: broadcast model.buffers() too"
        )
        return CheckResult(exercise, INCORRECT, hint)
    wrong = [name for name in params if name not in right]
    hint = (
        f"{len(wrong)} of {len(params)} parameters ({', '.join(wrong)}) still differ from rank "
        "0's: broadcast every tensor of model.parameters() and model.buffers()"
    )
    return CheckResult(exercise, INCORRECT, hint)


_GRAD_SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]


def _rank_grads(rank: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(710 + rank)
    return [torch.randn(shape, generator=g) for shape in _GRAD_SHAPES]


def _average_worker(fn: Callable) -> tuple[list[Tensor], int] | str:
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in _GRAD_SHAPES]
    for param, grad in zip(params, _rank_grads(dist.get_rank()), strict=True):
        param.grad = grad
    # Count the learner's all-reduce calls: the exercise asks for one, whatever the number of
    # parameters. Replacing the module attribute catches every `dist.all_reduce(...)` call.
    calls, real = [], dist.all_reduce
    dist.all_reduce = lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs)
    try:
        if _learner_call(fn, params) is _SKIPPED:
            return _SKIPPED
    finally:
        dist.all_reduce = real
    return [param.grad.clone() for param in params], len(calls)


@checker("07.average_gradients")
def _check_average_gradients(fn: Callable) -> CheckResult:
    exercise, p = "07.average_gradients", 3
    got = _on_workers(exercise, p, _average_worker, fn)
    if isinstance(got, CheckResult):
        return got
    grads = [_rank_grads(r) for r in range(p)]
    sums = [sum(g[i] for g in grads) for i in range(len(_GRAD_SHAPES))]
    # What each rank's parameter i holds under each answer, right or wrong.
    kinds = {
        "mean": lambda r, i: sums[i] / p,
        "own": lambda r, i: grads[r][i],
        "sum": lambda r, i: sums[i],
        "twice": lambda r, i: sums[i] / p**2,
        "by 2": lambda r, i: sums[i] / 2,
    }
    found = set()
    for r, (got_grads, _) in enumerate(got):
        for i, grad in enumerate(got_grads):
            kind = next((k for k, value in kinds.items() if same(grad, value(r, i))), "other")
            found.add(kind)
    calls = got[0][1]
    if found == {"mean"}:
        if calls > 1:
            hint = (
                f"the averages are right, but you called dist.all_reduce {calls} times, once per "
                "parameter: each call pays the latency α. Copy all gradients into one flat buffer "
                "(torch.cat), all-reduce it once, and copy the slices back"
            )
            return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, CORRECT)
    hints = {
        "sum": "all_reduce sums over the ranks: divide by the world size K",
        "twice": "you divided by K twice: all_reduce gives the sum, one division the mean",
        "by 2": f"you divided by 2, but there are {p} ranks here: use dist.get_world_size()",
    }
    if len(found) == 1 and next(iter(found)) in hints:
        return CheckResult(exercise, INCORRECT, hints[next(iter(found))])
    if found == {"own"}:
        if calls == 0:
            return CheckResult(exercise, INCORRECT, "the gradients are unchanged: all-reduce them")
        hint = (
            "the gradients are unchanged: torch.cat makes a copy, so after the all-reduce copy "
            "each slice of the averaged buffer back into its p.grad"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if found == {"mean", "own"}:
        hint = (
            "only some parameters were averaged; the others still hold this rank's own gradient, "
            "and the replicas will drift apart: average every parameter's gradient"
        )
        return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, INCORRECT, "each p.grad must become the mean over the K ranks")


# ---- 08 overlap and buckets: gradient hooks, and a bucket assignment run by a real DDP


class _OutOfOrder(torch.nn.Module):
    """Layers used in another order than defined: backward follows use, not definition."""

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)
        self.third = torch.nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.third(torch.tanh(self.first(torch.tanh(self.second(x)))))


def _tiny_gpt() -> model.GPT:
    """A GPT small enough for a check in a fraction of a second; tied embeddings included."""
    return model.GPT(model.GPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16))


def _hook_cases() -> list[tuple[torch.nn.Module, Callable]]:
    """(module, compute_loss) pairs, each built fresh so that no earlier hook is left on it."""
    torch.manual_seed(0)
    toy, gpt = _OutOfOrder(), _tiny_gpt()
    x = torch.randn(5, 4)
    idx = torch.randint(256, (2, 9), generator=torch.Generator().manual_seed(0))
    return [
        (toy, lambda: toy(x).pow(2).mean()),
        (gpt, lambda: gpt(idx[:, :-1], idx[:, 1:])[1]),
    ]


def _ready_order(module: torch.nn.Module, compute_loss: Callable) -> list[str]:
    """Names of module's parameters in the order one backward finishes their gradients."""
    names = {p: name for name, p in module.named_parameters()}  # tensors hash by identity
    order: list[str] = []
    handles = [
        p.register_post_accumulate_grad_hook(lambda p: order.append(names[p])) for p in names
    ]
    try:
        compute_loss().backward()
    finally:
        for handle in handles:
            handle.remove()
    return order


@checker("08.ready_order")
def _check_ready_order(fn: Callable) -> CheckResult:
    exercise = "08.ready_order"
    for (module, compute_loss), (ref_module, ref_loss) in zip(
        _hook_cases(), _hook_cases(), strict=True
    ):
        expected = _ready_order(ref_module, ref_loss)
        try:
            got = fn(module, compute_loss)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "replace the `raise NotImplementedError`")
        except Exception as e:
            return CheckResult(exercise, INCORRECT, f"it raised {type(e).__name__}: {e}")
        if not isinstance(got, list) or not all(isinstance(name, str) for name in got):
            hint = "return a list of names (str), as model.named_parameters() gives them"
            return CheckResult(exercise, INCORRECT, hint)
        seen = list(got)
        compute_loss().backward()  # one more backward: a hook still registered would record it
        if len(got) != len(seen):
            hint = (
                "your hooks are still registered after your function returned, and record every "
                "later backward too: keep the handles and call handle.remove() on each"
            )
            return CheckResult(exercise, INCORRECT, hint)
        if got == expected:
            continue
        defined = [name for name, _ in module.named_parameters()]
        if not got:
            hint = "the list is empty: register the hooks, then run compute_loss().backward()"
        elif got == defined:
            hint = (
                "that is the order the model defines its parameters in; record the names "
                "inside a hook, as backward reaches each one"
            )
        elif got == defined[::-1]:
            hint = (
                "reversed definition order is a good guess, but backward follows the order in "
                "which forward used the layers (here not the order they were defined in): record "
                "the names inside a hook"
            )
        elif sorted(got) == sorted(expected * 2):
            hint = "each name appears twice: did you run backward twice, or register two hooks?"
        else:
            hint = "use register_post_accumulate_grad_hook and append the name when it runs"
        return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, CORRECT)


def _buckets(sizes: list[int], cap: int) -> list[list[int]]:
    """Parameter indices in reverse order, cut into buckets of at most cap bytes (a parameter
    larger than cap alone in its bucket): DistributedDataParallel's rule without its small first
    bucket."""
    buckets, size = [], 0
    for i in reversed(range(len(sizes))):
        if not buckets or size + sizes[i] > cap:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += sizes[i]
    return buckets


def _bucket_cases() -> list[tuple[list[int], int]]:
    """(bytes per parameter, cap): a parameter over the cap, buckets that fill exactly, a cap
    below every parameter, and one above all of them together."""
    mixed = [4000, 64, 256, 1024, 768, 2048, 16, 3072, 512]
    return [(mixed, 2048), ([400, 1600, 400, 1200, 800, 1200], 2000), (mixed, 10), (mixed, 1 << 20)]


def _bucket_mistakes(sizes: list[int], cap: int) -> list[tuple[list[list[int]], str]]:
    forward = [[len(sizes) - 1 - i for i in b] for b in _buckets(sizes[::-1], cap)]
    eager = []  # a bucket closed as soon as it reaches the cap, not before it would exceed it
    for i in reversed(range(len(sizes))):
        if not eager or sum(sizes[j] for j in eager[-1]) + sizes[i] >= cap:
            eager.append([])
        eager[-1].append(i)
    return [
        (
            forward,
            "your first bucket holds the first parameters, whose gradients backward produces "
            "last, so it could only start at the very end: walk the parameters in reverse",
        ),
        (forward[::-1], "cut the buckets walking the parameters in reverse, from the last one"),
        (
            eager,
            "a bucket may hold exactly cap bytes: start a new one only when the next parameter "
            "would take it over the cap",
        ),
        (
            [[i] for i in reversed(range(len(sizes)))],
            "one parameter per bucket is per-parameter DDP, one message each: fill each bucket "
            "up to cap bytes",
        ),
    ]


def _bucket_structure(buckets, sizes: list[int], cap: int) -> str | None:
    """What is wrong with `buckets` whatever the order: a missing, repeated or oversized one."""
    if not isinstance(buckets, list) or not all(isinstance(b, list) for b in buckets):
        return "return a list of buckets, each a list of parameter indices"
    flat = [i for b in buckets for i in b]
    for i in range(len(sizes)):
        if flat.count(i) > 1:
            return f"parameter {i} is in {flat.count(i)} buckets: each belongs to exactly one"
        if i not in flat:
            return f"parameter {i} is in no bucket: every parameter needs one, or DDP waits forever"
    if any(not b for b in buckets):
        return "there is an empty bucket: a parameter larger than cap goes alone in a new bucket"
    for k, b in enumerate(buckets):
        total = sum(sizes[i] for i in b)
        if len(b) > 1 and total > cap:
            return (
                f"bucket {k} holds {total} bytes, over the cap of {cap}: start a new bucket "
                "before adding a parameter that does not fit"
            )
    return None


class _AssignedDDP(DistributedDataParallel):
    """Our DDP, with the buckets a learner's function assigns instead of its own."""

    def __init__(self, module: torch.nn.Module, assign: Callable, cap: int):
        self.assign, self.cap = assign, cap  # read by _make_buckets, which __init__ calls
        super().__init__(module)

    def _make_buckets(self, cap_mb: float) -> list[list[Tensor]]:
        sizes = [p.numel() * p.element_size() for p in self.params]
        return [[self.params[i] for i in bucket] for bucket in self.assign(sizes, self.cap)]


def _buckets_worker(fn: Callable, cap: int) -> tuple[Tensor, list[str]]:
    """One SGD step of a tiny GPT under DDP with fn's buckets: parameters and event order."""
    rank, K = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ddp = _AssignedDDP(_tiny_gpt().double(), fn, cap)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    idx = torch.randint(256, (4, 9), generator=torch.Generator().manual_seed(1))
    mine = data.rank_slice(idx, rank, K)
    ddp.events = []
    ddp(mine[:, :-1], mine[:, 1:])[1].backward()
    optimizer.step()
    events = [what for what, _, _ in ddp.events if what in ("launch", "backward end")]
    return torch.nn.utils.parameters_to_vector(ddp.parameters()).detach(), events


def _one_process_step() -> Tensor:
    """The same step as _buckets_worker's, in one process on the whole batch."""
    torch.manual_seed(0)
    net = _tiny_gpt().double()
    idx = torch.randint(256, (4, 9), generator=torch.Generator().manual_seed(1))
    net(idx[:, :-1], idx[:, 1:])[1].backward()
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach()


@checker("08.buckets")
def _check_buckets(fn: Callable) -> CheckResult:
    exercise = "08.buckets"
    for sizes, cap in _bucket_cases():
        try:
            got = fn(list(sizes), cap)
        except NotImplementedError:
            return CheckResult(exercise, NOT_ATTEMPTED, "replace the `raise NotImplementedError`")
        except Exception as e:
            return CheckResult(exercise, INCORRECT, f"it raised {type(e).__name__}: {e}")
        problem = _bucket_structure(got, sizes, cap)
        if problem:
            return CheckResult(exercise, INCORRECT, f"with cap {cap}: {problem}")
        as_sets = lambda buckets: [sorted(b) for b in buckets]  # order inside a bucket is free
        if as_sets(got) == as_sets(_buckets(sizes, cap)):
            continue
        for wrong, hint in _bucket_mistakes(sizes, cap):
            if as_sets(got) == as_sets(wrong):
                return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, INCORRECT, "compare with the rule above, on paper")
    # Right on paper: now as a real DDP on 2 processes, which must equal one process on the
    # whole batch, and start its first all-reduce while backward still runs.
    cap = 4096  # several buckets for the tiny GPT's float64 parameters
    expected = _one_process_step()  # first: the workers inherit what torch loads on first use
    results = _on_workers(exercise, 2, _buckets_worker, fn, cap)
    if isinstance(results, CheckResult):
        return results
    if not all(same(theta, expected, rtol=1e-9, atol=1e-12) for theta, _ in results):
        return CheckResult(exercise, INCORRECT, "with your buckets DDP did not match one process")
    if results[0][1][0] != "launch":
        hint = "the first bucket launched only after backward ended: fill buckets in reverse"
        return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, CORRECT)


# ---- 09 gradient accumulation: the learner's accumulation step on real processes; warmup


# Each rank's 6 sequences come as micro-batches of 3, 2 and 1 (an epoch's last batch is often
# short), so weighting each micro-batch's mean loss by its share differs from dividing by M.
_MICRO_SIZES, _ACC_K, _ACC_LR = (3, 2, 1), 2, 0.5
_PER_RANK = sum(_MICRO_SIZES)


def _accumulation_batch() -> tuple[Tensor, Tensor]:
    """The global batch of the check: 2 ranks x 6 sequences of 8 tokens, inputs and targets."""
    idx = torch.randint(256, (_ACC_K * _PER_RANK, 9), generator=torch.Generator().manual_seed(9))
    return idx[:, :-1], idx[:, 1:]


def _micro_batches(rank: int, world_size: int) -> list[tuple[Tensor, Tensor]]:
    x, y = (data.rank_slice(t, rank, world_size) for t in _accumulation_batch())
    return list(zip(x.split(_MICRO_SIZES), y.split(_MICRO_SIZES), strict=True))


def _accumulation_worker(fn: Callable) -> tuple[Tensor, int, int] | str:
    """The learner's step on our DDP: the update it made, all-reduces launched, buckets."""
    rank, K = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ddp = DistributedDataParallel(_tiny_gpt().double(), bucket_cap_mb=0.01)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=_ACC_LR)
    before = torch.nn.utils.parameters_to_vector(ddp.parameters()).detach().clone()
    for p in ddp.parameters():  # what an earlier step left behind: zero_grad must clear it
        p.grad = torch.full_like(p, 0.01)
    ddp.events = []
    if _learner_call(fn, ddp, optimizer, _micro_batches(rank, K)) is _SKIPPED:
        return _SKIPPED
    after = torch.nn.utils.parameters_to_vector(ddp.parameters()).detach()
    launches = sum(1 for what, _, _ in ddp.events if what == "launch")
    return after - before, launches, len(ddp.buckets)


def _micro_rows(m: int) -> list[int]:
    """Rows of the global batch in every rank's micro-batch m, which DDP averages together."""
    start = sum(_MICRO_SIZES[:m])
    return [r * _PER_RANK + start + j for r in range(_ACC_K) for j in range(_MICRO_SIZES[m])]


def _accumulated_update(
    ms: list[int], scales: list[float], stale=False, step_each=False, zero_each=True
) -> Tensor:
    """One process's update for an accumulation done right or wrong, on the 2 ranks' data.

    ms: the micro-batches whose backward counts; scales: each one's loss factor; stale: leftover
    gradients kept; step_each: an optimizer step after every backward, followed by zero_grad
    when zero_each.
    """
    torch.manual_seed(0)
    net = _tiny_gpt().double()
    optimizer = torch.optim.SGD(net.parameters(), lr=_ACC_LR)
    before = torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    x, y = _accumulation_batch()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.01) if stale else None
    for i, (m, scale) in enumerate(zip(ms, scales, strict=True)):
        rows = _micro_rows(m)
        (net(x[rows], y[rows])[1] * scale).backward()
        if step_each or i == len(ms) - 1:
            optimizer.step()
            if zero_each:
                optimizer.zero_grad()
    return torch.nn.utils.parameters_to_vector(net.parameters()).detach() - before


@checker("09.accumulation_step")
def _check_accumulation_step(fn: Callable) -> CheckResult:
    exercise, K, M = "09.accumulation_step", _ACC_K, len(_MICRO_SIZES)
    # Computed before the workers start, so that they inherit what torch loads on first use.
    every, last = list(range(M)), [M - 1]
    shares = [b / _PER_RANK for b in _MICRO_SIZES]  # b_m / B: a micro-batch's share of examples
    reference = _accumulated_update(every, shares)
    got = _on_workers(exercise, K, _accumulation_worker, fn)
    if isinstance(got, CheckResult):
        return got
    (update, launches, buckets), (other, _, _) = got
    if not same(update, other, rtol=1e-9, atol=1e-12):
        hint = (
            "the replicas differ after your step: every rank must apply the same averaged "
            "gradient. The last backward runs outside model.no_sync() (that is when DDP averages), "
            "and optimizer.step() comes only after it"
        )
        return CheckResult(exercise, INCORRECT, hint)
    if same(update, reference):
        if launches > buckets:
            hint = (
                f"the step is right, but DDP all-reduced {launches // buckets} times: run every "
                "backward but the last inside `with model.no_sync():`, so gradients travel once"
            )
            return CheckResult(exercise, INCORRECT, hint)
        return CheckResult(exercise, CORRECT)
    stepped = "you stepped after every micro-batch: call optimizer.step() once, after the last"
    mistakes = [
        (
            _accumulated_update(every, [1 / M] * M),
            "dividing by M weighs every micro-batch alike, but here they hold 3, 2 and 1 "
            "sequences: scale each micro-batch's mean loss by its share of the examples, "
            "len(x) / (total examples on this rank)",
        ),
        (
            _accumulated_update(every, [1.0] * M),
            "the gradient is too large: each micro-batch's loss is a mean over its own examples; "
            "scale it by its share of the examples, so that the backward passes add up to one mean",
        ),
        (
            _accumulated_update(every, [s / K for s in shares]),
            "do not divide by the number of ranks: DDP already averages over them",
        ),
        (
            _accumulated_update(last, shares[-1:]),
            "only the last micro-batch counted: call optimizer.zero_grad() once, before the loop, "
            "not inside it; backward adds into .grad, which is what accumulates",
        ),
        (
            _accumulated_update(last, [1.0]),
            "only the last micro-batch counted: zero the gradients once, before the loop",
        ),
        (
            _accumulated_update(every, shares, stale=True),
            "gradients left from before your step were added in: start with optimizer.zero_grad()",
        ),
        (_accumulated_update(every, shares, step_each=True), stepped),
        (_accumulated_update(every, shares, step_each=True, zero_each=False), stepped),
        (_accumulated_update(every, [1 / M] * M, step_each=True), stepped),
        (_accumulated_update(every, [1.0] * M, step_each=True), stepped),
    ]
    for wrong, hint in mistakes:
        if same(update, wrong):
            return CheckResult(exercise, INCORRECT, hint)
    return CheckResult(exercise, INCORRECT, "compare with the accumulation loop above")


def _warmup(step: int, base_lr: float, k: int, warmup_steps: int) -> float:
    """Goyal et al.'s gradual warmup: from base_lr linearly to k * base_lr, then constant."""
    if step >= warmup_steps:
        return k * base_lr
    return base_lr * (1 + (k - 1) * step / warmup_steps)


@checker("09.warmup_lr")
def _check_warmup_lr(fn: Callable) -> CheckResult:
    def schedule(lr_at: Callable) -> Callable:
        return lambda base, k, w: [lr_at(t, base, k, w) for t in range(w + 4)]

    def shaped(lr_at: Callable) -> Callable:  # the rate at each step, made plain floats
        return lambda base, k, w: [float(v) for v in schedule(lr_at)(base, k, w)]

    mistakes = [
        (
            schedule(lambda t, b, k, w: k * b * min(t, w) / w),
            "the warmup starts at the small-batch rate η, not at 0: at step 0 the rate is η",
        ),
        (
            schedule(lambda t, b, k, w: k * b * min(t + 1, w) / w),
            "that is warmup from 0, as the trainer of notebook 10 does; Goyal et al. start at "
            "the small-batch rate η",
        ),
        (
            schedule(lambda t, b, k, w: b * min(t, w) / w),
            "after warmup the rate is kη (the linear scaling rule), not η",
        ),
        (schedule(lambda t, b, k, w: k * b), "no warmup: the rate must climb from η to kη"),
        (
            schedule(lambda t, b, k, w: b * (1 + (k - 1) * t / w)),
            "stop climbing at kη once step ≥ warmup_steps",
        ),
        (
            schedule(lambda t, b, k, w: _warmup(t + 1, b, k, w)),
            "off by one: at step 0 the rate is η, and it reaches kη at step warmup_steps",
        ),
        (
            schedule(lambda t, b, k, w: _warmup(t, b, k**0.5, w)),
            "that is the square-root rule: the linear rule multiplies the rate by k",
        ),
    ]
    cases = [(0.1, 4, 5), (0.05, 8, 10), (0.2, 2, 3)]
    return compare("09.warmup_lr", shaped(fn), shaped(_warmup), cases, mistakes)


# ---- 10 training a GPT


@checker("10.scaling_efficiency")
def _check_scaling_efficiency(fn: Callable) -> CheckResult:
    efficiency = lambda one, many, k: many / (k * one)
    cases = [(1000.0, 1800.0, 2), (5e4, 1.2e5, 4), (2e3, 9e3, 8), (300.0, 300.0, 3)]
    mistakes = [
        (
            lambda one, many, k: many / one,
            "that is the speedup: divide it by K, the speedup K workers would give at best",
        ),
        (
            lambda one, many, k: k * one / many,
            "upside down: measured over ideal, that is (tokens/s with K) / (K × tokens/s with 1)",
        ),
        (lambda one, many, k: one / many, "measured over ideal: (tokens/s with K) / (K × with 1)"),
        (lambda one, many, k: many / (k * k * one), "divide by K once, not twice"),
        (lambda one, many, k: 100 * efficiency(one, many, k), "a fraction, not a percentage"),
    ]
    return compare("10.scaling_efficiency", fn, efficiency, cases, mistakes)


def _mfu(n_params, n_layer, n_embd, block_size, tokens_per_s, peak_flops, n_gpus) -> float:
    """As minidp.train measures it: 6N + 12 L T d FLOPs per token (PaLM, appendix B)."""
    flops_per_token = 6 * n_params + 12 * n_layer * block_size * n_embd
    return flops_per_token * tokens_per_s / (peak_flops * n_gpus)


@checker("10.mfu")
def _check_mfu(fn: Callable) -> CheckResult:
    cases = [
        (85_000_000, 12, 768, 1024, 4.0e5, 989e12, 8),
        (120_000, 2, 64, 1024, 3.0e4, 1e11, 2),
        (1_500_000_000, 48, 1600, 1024, 1.0e5, 312e12, 16),
    ]
    attention = lambda L, d, T: 12 * L * T * d
    mistakes = [
        (
            lambda N, L, d, T, tps, peak, n: (2 * N + attention(L, d, T) / 3) * tps / (peak * n),
            "that counts the forward pass only: backward costs twice as much, 6N in all",
        ),
        (
            lambda N, L, d, T, tps, peak, n: 6 * N * tps / (peak * n),
            "add the attention's 12 L T d FLOPs per token: with a long context they matter",
        ),
        (
            lambda N, L, d, T, tps, peak, n: _mfu(N, L, d, T, tps, peak, 1),
            "peak_flops is one GPU's: the job's peak is n_gpus times it",
        ),
        (
            lambda N, L, d, T, tps, peak, n: _mfu(N, L, d, T, tps, peak, 1) * n,
            "divide by the job's peak, n_gpus × peak_flops, not multiply",
        ),
        (
            lambda N, L, d, T, tps, peak, n: 100 * _mfu(N, L, d, T, tps, peak, n),
            "a fraction, not a percentage",
        ),
    ]
    return compare("10.mfu", fn, _mfu, cases, mistakes)


@checker("10.micro_batch")
def _check_micro_batch(fn: Callable) -> CheckResult:
    per_gpu = lambda B, nodes, gpus, accum: B // (nodes * gpus * accum)
    cases = [(512, 2, 8, 4), (256, 4, 4, 2), (96, 1, 2, 3), (1024, 8, 8, 1)]
    mistakes = [
        (lambda B, n, g, a: B // (g * a), "every node's GPUs take part: divide by nnodes too"),
        (
            lambda B, n, g, a: B // (n * g),
            "the batch is also split over grad_accum micro-steps: divide by it too",
        ),
        (
            lambda B, n, g, a: B // (n * a),
            "each node runs nproc_per_node processes, one per GPU: divide by it too",
        ),
        (lambda B, n, g, a: B // (n * g) * a, "divide by grad_accum, do not multiply"),
        (lambda B, n, g, a: B * n * g * a, "the global batch is shared out: divide, not multiply"),
    ]
    return compare("10.micro_batch", fn, per_gpu, cases, mistakes)


# ---- 11 beyond data parallelism


def _model_states(params, zero_stage, dp, sizes=(2, 2, 12), shift=0, shard_all=False) -> float:
    """Bytes per GPU of mixed-precision Adam's model states, or a predictable mistake in them."""
    stage = min(max(zero_stage + shift, 0), 3)
    w, g, k = sizes  # bytes per parameter: weights, gradients, optimizer state
    if shard_all and stage >= 1:
        return (w + g + k) * params / dp
    sharded = lambda first_stage: dp if stage >= first_stage else 1
    return w * params / sharded(3) + g * params / sharded(2) + k * params / sharded(1)


@checker("11.model_state_bytes")
def _check_model_state_bytes(fn: Callable) -> CheckResult:
    # Stage 2 before stage 1: there, sharding nothing and shifting the stages by one differ.
    cases = [(1e9, 0, 8), (2e9, 2, 16), (7.5e9, 1, 64), (2e9, 3, 16), (3e9, 1, 4)]
    stages = "stage 1 shards the optimizer state, stage 2 also the gradients, stage 3 also weights"
    mistakes = [
        (
            lambda P, s, dp: _model_states(P, s, dp, sizes=(2, 2, 8)),
            "mixed-precision Adam keeps K = 12 bytes per parameter: an fp32 copy of the weights "
            "(4), the momentum (4) and the variance (4)",
        ),
        (
            lambda P, s, dp: _model_states(P, s, dp, sizes=(4, 4, 12)),
            "weights and gradients are 16-bit, 2 bytes each; the fp32 copy is in the 12",
        ),
        (lambda P, s, dp: _model_states(P, s, dp, shard_all=True), stages),
        (lambda P, s, dp: _model_states(P, s, dp, shift=1), stages),
        (lambda P, s, dp: _model_states(P, s, dp, shift=-1), stages),
        (
            lambda P, s, dp: _model_states(P, 0, dp),
            "ZeRO divides what it shards by dp, the number of data-parallel GPUs",
        ),
        (lambda P, s, dp: _model_states(P, s, dp) / 1e9, "return bytes, not GB"),
    ]
    return compare("11.model_state_bytes", fn, _model_states, cases, mistakes)


@checker("11.bubble_fraction")
def _check_bubble_fraction(fn: Callable) -> CheckResult:
    cases = [(4, 8), (2, 1), (8, 32), (3, 5), (1, 4)]
    mistakes = [
        (
            lambda p, m: (p - 1) / m,
            "that is the idle time relative to the busy time; as a share of all the time it is "
            "(p - 1) / (m + p - 1)",
        ),
        (lambda p, m: m / (m + p - 1), "that is the busy share: the bubble is what is left"),
        (lambda p, m: (p - 1) / p, "more micro-batches shrink the bubble: m belongs in it"),
        (lambda p, m: (p - 1) / (m + p), "the forwards of m micro-batches fill m + p - 1 slots"),
        (lambda p, m: 1 / m, "a single stage (p = 1) never waits: p belongs in it"),
    ]
    return compare("11.bubble_fraction", fn, model_parallel.bubble_fraction, cases, mistakes)


def _tp_partial(x, fc_weight, fc_bias, proj_weight, proj_bias, rank, t) -> Tensor:
    units = model_parallel.shard_range(fc_weight.shape[0], rank, t)  # this rank's hidden units
    return F.gelu(x @ fc_weight[units].T + fc_bias[units]) @ proj_weight[:, units].T


def _tp_cases() -> list[tuple]:
    g = torch.Generator().manual_seed(11)
    h = 8
    weights = [torch.randn(4 * h, h, generator=g), torch.randn(4 * h, generator=g),
               torch.randn(h, 4 * h, generator=g), torch.randn(h, generator=g)]  # fmt: skip
    x = torch.randn(2, 3, h, generator=g)
    return [(x, *weights, rank, t) for rank, t in ((0, 2), (1, 2), (3, 4), (1, 4))]


@checker("11.tp_mlp_partial")
def _check_tp_mlp_partial(fn: Callable) -> CheckResult:
    def strided(x, W1, b1, W2, b2, r, t):
        return F.gelu(x @ W1[r::t].T + b1[r::t]) @ W2[:, r::t].T

    def input_split(x, W1, b1, W2, b2, r, t):
        cols = model_parallel.shard_range(W1.shape[1], r, t)
        return F.gelu(x[..., cols] @ W1[:, cols].T + b1) @ W2.T

    units = lambda W1, r, t: model_parallel.shard_range(W1.shape[0], r, t)
    mistakes = [
        (
            lambda x, W1, b1, W2, b2, r, t: _tp_partial(x, W1, b1, W2, b2, r, t) + b2,
            "add the second bias once, after the all-reduce: added on every rank, the sum "
            "would hold it t times",
        ),
        (
            lambda x, W1, b1, W2, b2, r, t: (
                (x @ W1[units(W1, r, t)].T + b1[units(W1, r, t)]) @ W2[:, units(W1, r, t)].T
            ),
            "apply GELU to your hidden units before the second matrix: it is elementwise, so "
            "each rank can apply it to its own",
        ),
        (
            strided,
            "take the contiguous block of hidden units [r·4h/t, (r+1)·4h/t), as "
            "minidp.model_parallel.shard_range gives it",
        ),
        (
            input_split,
            "split the first matrix by its 4h outputs, not its h inputs: GELU is not linear, "
            "so it cannot be applied to partial sums",
        ),
        (
            lambda x, W1, b1, W2, b2, r, t: F.gelu(x @ W1.T + b1) @ W2.T,
            "that is the whole MLP's output: each rank computes only its share, its 4h/t units",
        ),
        (
            lambda x, W1, b1, W2, b2, r, t: F.gelu(x @ W1.T + b1) @ W2.T + b2,
            "that is the whole MLP's output: each rank computes only its share, its 4h/t units",
        ),
    ]
    return compare("11.tp_mlp_partial", fn, _tp_partial, _tp_cases(), mistakes)
