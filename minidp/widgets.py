"""ipywidgets for the notebooks.

Each widget is a small class that holds its state (the values a test reads), its controls, and
an `update()` that the controls' callbacks call; so it works, and is tested, without a browser:
set a control's `.value` in a test and read the state back. Sections follow the course order.
"""

import ipywidgets as W  # noqa: F401
import matplotlib.pyplot as plt  # noqa: F401  (used as the sections are written)
import torch  # noqa: F401
