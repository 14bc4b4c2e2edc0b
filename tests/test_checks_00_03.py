"""The checkers of notebooks 00-03: each accepts the reference, tells each typical wrong answer
apart by its own hint, and says "not attempted" for an untouched stub.

The wrong answers are written here the way a learner would write them, not taken from the
checkers, so a checker whose mistake list drifts from what learners really do fails here.
"""

import pytest
import torch
import torch.nn.functional as F
from checking import assert_hint, stub, verdict
from solutions import notebook_solutions

from minidp import data, linear
from minidp.course import checks
from minidp.course.checks import CORRECT, INCORRECT, NOT_ATTEMPTED

# ---- the notebooks' own solutions (taken from the notebooks, not copied here)

SOLUTIONS = {ex: fn for nb in ("00", "01", "02", "03") for ex, fn in notebook_solutions(nb).items()}
# Some typical mistakes below are a right answer, changed: built from the notebooks' solutions.
my_cross_entropy = SOLUTIONS["01.cross_entropy"]
my_mse_grad = SOLUTIONS["02.mse_grad"]
my_gd_step = SOLUTIONS["02.gd_step"]
my_gradient_descent = SOLUTIONS["02.gradient_descent"]
my_worker_grads = SOLUTIONS["03.worker_grads"]
my_weighted_average = SOLUTIONS["03.weighted_average"]
my_dp_step = SOLUTIONS["03.dp_step"]


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_a_correct_answer_is_correct(exercise):
    assert verdict(exercise, SOLUTIONS[exercise]) == (CORRECT, "")


@pytest.mark.parametrize("exercise", sorted(SOLUTIONS))
def test_a_stub_is_not_attempted(exercise):
    assert verdict(exercise, stub)[0] == NOT_ATTEMPTED


def test_every_checker_of_00_to_03_is_tested():
    ours = {name for name in checks.CHECKERS if name[:2] in ("00", "01", "02", "03")}
    assert ours == set(SOLUTIONS)


def test_torch_itself_counts_as_correct():
    assert verdict("01.cross_entropy", F.cross_entropy)[0] == CORRECT
    assert verdict("01.mse", lambda t, X, y: F.mse_loss(X @ t, y) / 2)[0] == CORRECT


def test_a_crashing_answer_is_incorrect_with_the_error():
    status, hint = verdict("02.mse_grad", lambda t, X, y: X @ (X @ t - y))  # X, not X^T
    assert status == INCORRECT and "RuntimeError" in hint


def test_an_unknown_exercise_is_an_error():
    with pytest.raises(KeyError, match="01.mse"):
        checks.check("01.nonsense", SOLUTIONS["01.mse"])


# ---- typical wrong answers, each with its own hint


WRONG = [
    # 00.mean
    ("00.mean", lambda x: x.sum(), "sum"),
    ("00.mean", lambda x: x.sum() / (len(x) - 1), "m - 1"),
    # 01.mse
    ("01.mse", lambda t, X, y: ((X @ t - y) ** 2).sum() / 2, "divide by m"),
    ("01.mse", lambda t, X, y: ((X @ t - y) ** 2).mean(), "1/2"),
    ("01.mse", lambda t, X, y: ((X @ t - y) ** 2).sum(), "2m"),
    ("01.mse", lambda t, X, y: ((X @ t - y) ** 2).sum() / 2 * len(y), "(2 * m)"),
    ("01.mse", lambda t, X, y: (X @ t - y).mean() / 2, "square"),
    ("01.mse", lambda t, X, y: ((X @ t - y) ** 2).mean().sqrt(), "compare your result"),
    # 01.cross_entropy
    ("01.cross_entropy", lambda z, t: -my_cross_entropy(z, t), "minus sign"),
    ("01.cross_entropy", lambda z, t: my_cross_entropy(z, t) * len(t), "instead of summing"),
    ("01.cross_entropy", lambda z, t: F.nll_loss(z.log_softmax(dim=0), t), "dim=-1"),
    ("01.cross_entropy", lambda z, t: -z.softmax(-1)[range(len(t)), t].mean(), "log of the"),
    ("01.cross_entropy", lambda z, t: -z[range(len(t)), t].mean(), "logsumexp"),
    ("01.cross_entropy", lambda z, t: -z.log_softmax(-1).mean(), "target entry"),
    (
        "01.cross_entropy",
        lambda z, t: -(z.exp() / z.exp().sum(1, keepdim=True))[range(len(t)), t].log().mean(),
        "exp overflows",
    ),
    ("01.cross_entropy", lambda z, t: F.nll_loss(z.softmax(-1).log(), t), "-inf"),
    # 02.mse_grad
    ("02.mse_grad", lambda t, X, y: X.T @ (X @ t - y), "1/m"),
    ("02.mse_grad", lambda t, X, y: 2 / len(y) * X.T @ (X @ t - y), "cancels the 2"),
    ("02.mse_grad", lambda t, X, y: X.T @ (y - X @ t) / len(y), "sign"),
    ("02.mse_grad", lambda t, X, y: X.T @ (X @ t - y) / (2 * len(y)), "cancels J's 1/2"),
    # 02.gd_step
    ("02.gd_step", lambda t, X, y, lr: t + lr * my_mse_grad(t, X, y), "against the gradient"),
    ("02.gd_step", lambda t, X, y, lr: t - my_mse_grad(t, X, y), "learning rate"),
    ("02.gd_step", lambda t, X, y, lr: lr * my_mse_grad(t, X, y), "not the step"),
    ("02.gd_step", lambda t, X, y, lr: my_mse_grad(t, X, y), "not the gradient"),
    # 02.gradient_descent
    (
        "02.gradient_descent",
        lambda t, X, y, lr, s: my_gradient_descent(t, X, y, lr, s)[1:],
        "start",
    ),
    (
        "02.gradient_descent",
        lambda t, X, y, lr, s: my_gradient_descent(t, X, y, lr, s + 1),
        "too many",
    ),
    (
        "02.gradient_descent",
        lambda t, X, y, lr, s: my_gradient_descent(t, X, y, lr, s)[-1],
        "whole path",
    ),
    ("02.gradient_descent", lambda t, X, y, lr, s: my_gradient_descent(t, X, y, -lr, s), "against"),
]


def descent_in_place(theta, X, y, lr, steps):
    """The aliasing bug: every stored row is the same tensor, updated in place."""
    path = [theta]
    for _ in range(steps):
        theta -= lr * linear.mse_grad(theta, X, y)
        path.append(theta)
    return torch.stack(path)


def interleaved_worker_grads(theta, X, y, K):
    return [linear.mse_grad(theta, X[r::K], y[r::K]) for r in range(K)]


def worker_grads_over_m(theta, X, y, K):
    """Each worker divides its shard's sum by the full m instead of its own m/K."""
    per = len(y) // K
    shards = [(X[r * per : (r + 1) * per], y[r * per : (r + 1) * per]) for r in range(K)]
    return [Xr.T @ (Xr @ theta - yr) / len(y) for Xr, yr in shards]


def dp_step_with(combine):
    """A K-worker step whose gradients are combined by combine(grads, K, m)."""
    return lambda t, X, y, K, lr: t - lr * combine(my_worker_grads(t, X, y, K), K, len(y))


WRONG += [
    ("02.gradient_descent", descent_in_place, "in place"),
    # 03.worker_grads
    ("03.worker_grads", interleaved_worker_grads, "contiguous"),
    ("03.worker_grads", worker_grads_over_m, "not m"),
    (
        "03.worker_grads",
        lambda t, X, y, K: [len(y) * g for g in worker_grads_over_m(t, X, y, K)],
        "a sum",
    ),
    (
        "03.worker_grads",
        lambda t, X, y, K: [my_mse_grad(t, X, y) for _ in range(K)],
        "only its shard",
    ),
    # 03.weighted_average
    ("03.weighted_average", lambda grads, sizes: sum(grads) / len(grads), "plain mean"),
    (
        "03.weighted_average",
        lambda grads, sizes: sum(m * g for m, g in zip(sizes, grads, strict=True)),
        "total number",
    ),
    ("03.weighted_average", lambda grads, sizes: sum(grads), "that is a sum"),
    (
        "03.weighted_average",
        lambda g, s: my_weighted_average(g, s) / len(g),
        "do not also divide by K",
    ),
    # 03.dp_step
    ("03.dp_step", dp_step_with(lambda grads, K, m: sum(grads)), "divide the sum by K"),
    ("03.dp_step", dp_step_with(lambda grads, K, m: sum(grads) / m), "not of examples m"),
    ("03.dp_step", dp_step_with(lambda grads, K, m: sum(grads) / K / K), "divided by K twice"),
    ("03.dp_step", dp_step_with(lambda grads, K, m: grads[0]), "worker 0"),
    ("03.dp_step", lambda t, X, y, K, lr: my_dp_step(t, X, y, K, -lr), "against the gradient"),
    ("03.dp_step", lambda t, X, y, K, lr: my_dp_step(t, X, y, K, 1.0), "learning rate"),
]


@pytest.mark.parametrize(("exercise", "fn", "words"), WRONG, ids=[f"{e}-{w}" for e, _, w in WRONG])
def test_a_typical_mistake_gets_its_own_hint(exercise, fn, words):
    assert_hint(exercise, fn, words)


def test_the_hints_of_each_checker_differ():
    """Telling mistakes apart means no two of them share a hint."""
    for exercise in SOLUTIONS:
        hints = [verdict(e, fn)[1] for e, fn, _ in WRONG if e == exercise]
        generic = [h for h in hints if h.startswith("compare your result")]
        assert len(set(hints)) == len(hints) - max(len(generic) - 1, 0), exercise


def test_an_answer_that_modifies_its_input_list_does_not_corrupt_the_reference():
    def scales_in_place(grads, sizes):
        m = sum(sizes)
        for g, mk in zip(grads, sizes, strict=True):
            g.mul_(mk / m)
        return sum(grads)

    assert verdict("03.weighted_average", scales_in_place)[0] == CORRECT


def test_the_equal_shard_mean_is_the_full_gradient_the_dp_step_checker_assumes():
    X, y = data.linear_data(m=12, seed=5)
    theta = torch.tensor([0.3, -0.7])
    torch.testing.assert_close(my_dp_step(theta, X, y, 3, 0.1), my_gd_step(theta, X, y, 0.1))


# ---- 00: the environment check


def test_the_environment_of_this_machine_is_ready():
    env = checks.check_environment()
    assert env.ok, str(env)
    names = [r.what for r in env.requirements]
    assert names[0].startswith("Python") and "GPU" in names
    assert str(env).count("\n") == len(names) - 1


def test_a_missing_requirement_is_said_plainly():
    missing = checks.Requirement("fork", False, "use WSL 2")
    optional = checks.Requirement("GPU", False, "none", required=False)
    env = checks.Environment([missing, optional])
    assert not env.ok
    assert "❌ fork: use WSL 2" in str(env) and "➖ GPU: none" in str(env)
    assert checks.Environment([optional]).ok


def test_a_package_that_is_not_installed_is_missing():
    req = checks.nb00_welcome._package("surely-not-a-package-minidp", (1, 0), "for nothing")
    assert not req.ok and "pip install" in req.detail
