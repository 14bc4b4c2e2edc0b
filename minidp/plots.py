"""Matplotlib figures for the notebooks.

Each function draws a figure and returns it (or the Axes it drew on), so that a notebook shows
it and a test can inspect what was drawn without a screen. Sections follow the course order.
"""

import matplotlib.pyplot as plt  # noqa: F401  (used as the sections are written)
import numpy as np  # noqa: F401
import torch  # noqa: F401
