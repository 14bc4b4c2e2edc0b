"""Checkers of notebook 02, gradient descent."""

from collections.abc import Callable

from minidp import linear
from minidp.course.checks.core import CheckResult, checker, compare
from minidp.course.checks.nb01_loss import linear_cases


@checker("02.mse_grad")
def _check_mse_grad(fn: Callable) -> CheckResult:
    g = lambda theta, X, y: X.T @ (X @ theta - y)  # the sum over examples, like theta
    mistakes = [
        (lambda t, X, y: g(t, X, y), "J is a mean, so its gradient has a factor 1/m"),
        (lambda t, X, y: 2 * g(t, X, y) / len(y), "the 1/2 in J cancels the 2 from the square"),
        (lambda t, X, y: -g(t, X, y) / len(y), "sign error: the residual is h(x) - y"),
        (lambda t, X, y: g(t, X, y) / (2 * len(y)), "the 2 from the square cancels J's 1/2"),
    ]
    return compare("02.mse_grad", fn, linear.mse_grad, linear_cases(), mistakes)


@checker("02.gd_step")
def _check_gd_step(fn: Callable) -> CheckResult:
    step = lambda t, X, y, lr: t - lr * linear.mse_grad(t, X, y)
    grad = lambda t, X, y, lr: linear.mse_grad(t, X, y)
    mistakes = [
        (lambda t, X, y, lr: t + lr * grad(t, X, y, lr), "step against the gradient: θ - η ∇J"),
        (lambda t, X, y, lr: t - grad(t, X, y, lr), "multiply the gradient by the learning rate"),
        (lambda t, X, y, lr: lr * grad(t, X, y, lr), "return the new θ, not the step η ∇J"),
        (grad, "return the new θ = θ - η ∇J, not the gradient"),
    ]
    cases = [(*case, lr) for case, lr in zip(linear_cases(), (0.1, 0.05, 0.3), strict=True)]
    return compare("02.gd_step", fn, step, cases, mistakes)


@checker("02.gradient_descent")
def _check_gradient_descent(fn: Callable) -> CheckResult:
    path = linear.gradient_descent
    mistakes = [
        (lambda t, X, y, lr, s: path(t, X, y, lr, s)[1:], "include the start: steps + 1 rows"),
        (lambda t, X, y, lr, s: path(t, X, y, lr, s + 1), "that is one step too many"),
        (lambda t, X, y, lr, s: path(t, X, y, lr, s)[-1], "return the whole path, not the end"),
        (
            lambda t, X, y, lr, s: path(t, X, y, lr, s)[-1].expand(s + 1, -1),
            "every row is the last θ: you updated θ in place after storing it; store a copy",
        ),
        (lambda t, X, y, lr, s: path(t, X, y, -lr, s), "step against the gradient: θ - η ∇J"),
    ]
    lrs, steps = (0.1, 0.05, 0.2), (5, 3, 8)
    cases = [(*case, lrs[i], steps[i]) for i, case in enumerate(linear_cases())]
    return compare("02.gradient_descent", fn, path, cases, mistakes)
