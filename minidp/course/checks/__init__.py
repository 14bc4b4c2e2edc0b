"""Exercise checkers: run a learner's `my_*` function against minidp's reference and say whether
it is correct, incorrect (with a hint naming the likely mistake), or not attempted yet.

In a notebook, after `from minidp.course import checks`:

    def my_mse(theta, X, y):
        raise NotImplementedError   # the learner replaces this
    checks.check("01.mse", my_mse)          # -> "not attempted"

Every call is also recorded in `RESULTS` (see `report()`). Grading does not read it: it judges
what the learner's function answered again, in its own process (see `core` and `transcript`).
A checker is a function `fn ->
CheckResult`, registered under an exercise id "NN.name" (NN: the notebook). The framework is in
`core`; each notebook's checkers are in the module of the same name (`nb01_loss` for
01_loss.ipynb), most built with `core.compare`, which tries the learner's function on several
inputs and recognises typical wrong answers by computing them too.
"""

from minidp.course.checks import (  # noqa: F401  (importing a notebook's module registers its checkers)
    nb00_welcome,
    nb01_loss,
    nb02_gradient_descent,
    nb03_gradient_averaging,
    nb04_processes_and_collectives,
    nb05_parameter_server_and_async,
    nb06_all_reduce,
    nb07_ddp_by_hand,
    nb08_overlap_and_buckets,
    nb09_gradient_accumulation,
    nb10_training_a_gpt,
    nb11_beyond_data_parallel,
    nb12_sharding_everything,
)
from minidp.course.checks.core import (
    CHECKERS,
    CORRECT,
    INCORRECT,
    NOT_ATTEMPTED,
    RESULTS,
    CheckResult,
    check,
    checker,
    compare,
    report,
    same,
)
from minidp.course.checks.nb00_welcome import Environment, Requirement, check_environment

__all__ = [
    "CHECKERS",
    "CORRECT",
    "INCORRECT",
    "NOT_ATTEMPTED",
    "RESULTS",
    "CheckResult",
    "Environment",
    "Requirement",
    "check",
    "check_environment",
    "checker",
    "compare",
    "report",
    "same",
]
