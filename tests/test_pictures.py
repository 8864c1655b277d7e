"""The run's pictures: every text inside the picture, whatever the layer names."""

from __future__ import annotations

import pytest

from gradsweep.run import pictures


@pytest.mark.parametrize("name_length", [3, 40])
def test_margins_hold_every_label_and_the_title(name_length: int) -> None:
    plt = pictures._pyplot()
    names = [f"{i} " + "x" * name_length for i in range(12)]
    fig, ax = plt.subplots(figsize=(8, 4))
    mesh = ax.imshow([[float(i + j) for j in range(50)] for i in range(12)], aspect="auto")
    ax.set_yticks(range(12), names)
    ax.set_xlabel("step")
    ax.set_ylabel("weight layer")
    ax.set_title("activation=sigmoid init=default norm=none skip=none\nvanishing")
    fig.colorbar(mesh, ax=ax, label="log10 gradient L2 norm")
    pictures._fit_margins(fig, ax)
    fig.canvas.draw()  # places the axis labels
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    texts = [*ax.get_yticklabels(), ax.yaxis.label, ax.xaxis.label, ax.title]
    try:
        for text in texts:
            box = text.get_window_extent(renderer)
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, text.get_text()
            assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1, text.get_text()
    finally:
        plt.close(fig)
