"""Checkers of notebook 01, loss."""

from collections.abc import Callable

import torch

from minidp import data, linear, model
from minidp.course.checks.core import CheckResult, checker, compare
from minidp.course.i18n import _


def linear_cases() -> list[tuple]:
    """(theta, X, y) of a few sizes; m is never 2, where forgetting 1/m and 1/2 would agree."""
    cases = []
    for m, columns, seed in ((7, 2, 1), (12, 3, 2), (30, 2, 3)):
        g = torch.Generator().manual_seed(seed)
        theta = tuple(torch.randn(columns, generator=g).tolist())
        X, y = data.linear_data(m, theta=theta, seed=seed)
        cases.append((torch.randn(columns, generator=g), X, y))
    return cases


@checker("01.mse")
def _check_mse(fn: Callable) -> CheckResult:
    r = lambda theta, X, y: X @ theta - y  # residuals, (m,)
    mistakes = [
        (lambda t, X, y: (r(t, X, y) ** 2).sum() / 2, _("J is a mean: divide by m as well")),
        (lambda t, X, y: (r(t, X, y) ** 2).mean(), _("J has a factor 1/2 in front of the mean")),
        (lambda t, X, y: (r(t, X, y) ** 2).sum(), _("divide the sum of squares by 2m")),
        (
            lambda t, X, y: (r(t, X, y) ** 2).sum() / 2 * len(y),
            _("`/ 2 * m` multiplies by m: write `/ (2 * m)`"),
        ),
        (lambda t, X, y: r(t, X, y).mean() / 2, _("square each residual before averaging")),
    ]
    return compare("01.mse", fn, linear.mse_loss, linear_cases(), mistakes)


def _token_cases() -> list[tuple]:
    """(logits (m, V), targets (m,)); the last has logits in the hundreds, where exp overflows."""
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(5, 7, generator=g), torch.randint(7, (5,), generator=g)),
        (3 * torch.randn(12, 256, generator=g), torch.randint(256, (12,), generator=g)),
        (200 * torch.randn(6, 9, generator=g), torch.randint(9, (6,), generator=g)),
    ]


@checker("01.cross_entropy")
def _check_cross_entropy(fn: Callable) -> CheckResult:
    pick = lambda values, t: values.gather(-1, t[:, None]).squeeze(-1)  # each row's target entry
    log_q = lambda z: z.log_softmax(-1)  # log q, the model's log-probabilities
    mistakes = [
        (lambda z, t: pick(log_q(z), t).mean(), _("the loss is -log q: you forgot the minus sign")),
        (
            lambda z, t: -pick(log_q(z), t).sum(),
            _("average over the m predictions instead of summing"),
        ),
        (
            lambda z, t: -pick(z.log_softmax(0), t).mean(),
            _("normalise over the vocabulary: dim=-1"),
        ),
        (lambda z, t: -pick(z.softmax(-1), t).mean(), _("take the log of the probability")),
        (
            lambda z, t: -pick(z, t).mean(),
            _("turn logits into log-probabilities: z - logsumexp(z)"),
        ),
        (lambda z, t: -log_q(z).mean(), _("use only each row's target entry, not every entry")),
        (
            lambda z, t: -pick(z.exp() / z.exp().sum(-1, keepdim=True), t).log().mean(),
            _("exp overflows for large logits: use z - torch.logsumexp(z, dim=-1, keepdim=True)"),
        ),
        (
            lambda z, t: -pick(z.softmax(-1), t).log().mean(),
            _("log(softmax) gives log(0) = -inf for large logits: use z - logsumexp(z)"),
        ),
    ]
    return compare("01.cross_entropy", fn, model.cross_entropy, _token_cases(), mistakes)
