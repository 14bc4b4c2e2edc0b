"""ipywidgets for the notebooks.

Each widget is a small class that holds its state (the values a test reads), its controls, and
an `update()` that the controls' callbacks call; so it works, and is tested, without a browser:
set a control's `.value` in a test and read the state back. One module per part of the course;
every widget is also available here, as `minidp.course.widgets.<name>`.
"""

from minidp.course.widgets.ddp import (
    LargeBatchExplorer,
    TimelineExplorer,
)
from minidp.course.widgets.processes import (
    RingReplay,
    StalenessExplorer,
    replay_ring,
)
from minidp.course.widgets.scale import (
    MemoryCalculator,
)
from minidp.course.widgets.single_process import (
    GradientAveraging,
    LearningRateExplorer,
)

__all__ = [
    "GradientAveraging",
    "LargeBatchExplorer",
    "LearningRateExplorer",
    "MemoryCalculator",
    "RingReplay",
    "StalenessExplorer",
    "TimelineExplorer",
    "replay_ring",
]
