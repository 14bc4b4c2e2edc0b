"""Matplotlib figures for the notebooks.

Each function draws a figure and returns it, so that a notebook shows it and a test can inspect
what was drawn without a screen. Figures are matplotlib.figure.Figure objects, not pyplot's:
pyplot would keep every figure a widget redraws alive, and show each a second time at the end of
the cell. One module per part of the course; every figure is also available here, as
`minidp.course.plots.<name>`.
"""

from minidp.course.plots.ddp import (
    PHASES,
    bucket_sweep,
    ddp_timeline,
    fastest_step,
    large_batch_runs,
    replica_gaps,
    scaling_rules,
    step_seconds,
)
from minidp.course.plots.processes import (
    alpha_beta,
    collective,
    contributors,
    cost_seconds,
    cost_terms,
    delay_counts,
    fit_alpha_beta,
    holdings,
    ring_step,
    round_times,
    staleness_effect,
)
from minidp.course.plots.scale import (
    PART_COLOURS,
    lr_schedule,
    memory_bar,
    parallel_layout,
    pipeline_schedule,
    replica_memory,
    scaling,
    tensor_parallel_mlp,
    training_curves,
    zero_stages,
)
from minidp.course.plots.sharding import KIND_COLOURS, fsdp_timeline, sharded_memory
from minidp.course.plots.single_process import (
    LIMITS,
    data_and_lines,
    descent_paths,
    gradient_clouds,
    loss_curves,
    loss_grid,
    loss_surface,
    neg_log_prob,
    worker_gradients,
)

__all__ = [
    "KIND_COLOURS",
    "LIMITS",
    "PART_COLOURS",
    "PHASES",
    "alpha_beta",
    "bucket_sweep",
    "collective",
    "contributors",
    "cost_seconds",
    "cost_terms",
    "data_and_lines",
    "ddp_timeline",
    "delay_counts",
    "descent_paths",
    "fastest_step",
    "fit_alpha_beta",
    "fsdp_timeline",
    "gradient_clouds",
    "holdings",
    "large_batch_runs",
    "loss_curves",
    "loss_grid",
    "loss_surface",
    "lr_schedule",
    "memory_bar",
    "neg_log_prob",
    "parallel_layout",
    "pipeline_schedule",
    "replica_gaps",
    "replica_memory",
    "ring_step",
    "round_times",
    "scaling",
    "scaling_rules",
    "sharded_memory",
    "staleness_effect",
    "step_seconds",
    "tensor_parallel_mlp",
    "training_curves",
    "worker_gradients",
    "zero_stages",
]
