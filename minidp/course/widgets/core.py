"""What every widget shares: how it shows a figure."""

import io

import ipywidgets as W


def draw(image: W.Image, fig) -> None:
    """Show `fig` in `image` as a PNG at its own size (an Image stretches to the page otherwise).

    An Image rather than an Output widget: nbconvert and nbclient (which grading uses) emulate
    Output widgets by sending on the kernel's shell channel while they await the cell's reply on
    it, and that can stall the cell for its whole timeout (jupyter/nbclient#312).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    image.value = buffer.getvalue()
    image.layout.width = f"{round(fig.get_figwidth() * fig.dpi)}px"
