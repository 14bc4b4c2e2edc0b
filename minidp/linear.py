"""Linear regression, the model of the first notebooks: its loss, its gradient, and descent.

    X, y = minidp.data.linear_data(m=100)           # X has a ones column: theta_0 is the bias
    theta = torch.zeros(2)
    mse_loss(theta, X, y); mse_grad(theta, X, y)     # J(theta) and its gradient, by hand
    path = gradient_descent(theta, X, y, lr=0.1, steps=50)

h_theta(x) = theta_0 + theta_1 x_1 + ... with X's first column all ones. Everything here is
written out by hand so that notebooks 01-03 can check it against autograd and torch, and
`average_gradients` is notebook 03's claim in code: K shards' gradients, averaged, are the
full batch's gradient.
"""

import torch
import torch.nn as nn
from torch import Tensor


def mse_loss(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """J(theta) = 1/(2m) sum_i (x_i . theta - y_i)^2, for X of shape (m, n) and y of shape (m,)."""
    residual = X @ theta - y  # (m,)
    return (residual**2).sum() / (2 * len(y))


def mse_grad(theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """dJ/dtheta = 1/m X^T (X theta - y), derived by hand: the reference autograd must match."""
    return X.T @ (X @ theta - y) / len(y)


def least_squares(X: Tensor, y: Tensor) -> Tensor:
    """The theta that minimises J exactly, in closed form: where gradient descent should arrive."""
    return torch.linalg.lstsq(X, y[:, None]).solution.squeeze(-1)  # (n,)


def gradient_descent(
    theta: Tensor,
    X: Tensor,
    y: Tensor,
    lr: float,
    steps: int,
    batch_size: int | None = None,
    seed: int = 0,
) -> Tensor:
    """The path of theta := theta - lr * grad J(theta): (steps + 1, n), the start included.

    With batch_size, each step's gradient comes from batch_size examples drawn at random without
    replacement (mini-batch SGD), from a generator of its own so the path depends only on seed.
    """
    g = torch.Generator().manual_seed(seed)
    path = [theta.clone()]
    for _ in range(steps):
        if batch_size is None:
            grad = mse_grad(theta, X, y)
        else:
            rows = torch.randperm(len(y), generator=g)[:batch_size]
            grad = mse_grad(theta, X[rows], y[rows])
        theta = theta - lr * grad  # a new tensor: the path keeps every step, not K views of one
        path.append(theta)
    return torch.stack(path)


def average_gradients(grads: list[Tensor], sizes: list[int] | None = None) -> Tensor:
    """The full batch's gradient from K shards' mean-loss gradients: sum_k (m_k / m) grad_k.

    With equal shards (sizes None) the weights are all 1/K, the plain mean. With unequal shards the
    plain mean would weigh an example of a small shard more than one of a large shard.
    """
    if sizes is None:
        return torch.stack(grads).mean(dim=0)
    weights = torch.tensor(sizes, dtype=grads[0].dtype) / sum(sizes)  # m_k / m, (K,)
    return (weights[:, None] * torch.stack(grads)).sum(dim=0)  # (K, 1) * (K, n) -> (n,)


class LinearRegression(nn.Module):
    """h_theta(X) = X theta as a module, so that DDP and optimizers can train it."""

    def __init__(self, n_features: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n_features))

    def forward(self, X: Tensor) -> Tensor:
        return X @ self.theta
