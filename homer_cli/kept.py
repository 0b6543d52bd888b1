"""`homer show --kept / --text / --plot`: what a cache kept of its document, drawn for a person.
The shares are computed by `homer.kept`; this module only draws them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from homer.kept import Region

BAR_WIDTH = 30


def bar(share: float, width: int = BAR_WIDTH) -> str:
    """`share` of `width` cells filled: `█████░░░░░`."""
    filled = round(max(0.0, min(1.0, share)) * width)
    return "█" * filled + "░" * (width - filled)


def print_map(regions: list[Region], total_share: float) -> None:
    """One line per page or stretch: its label, a bar, the share kept."""
    width = max((len(r.label) for r in regions), default=0)
    for region in regions:
        typer.echo(f"{region.label:<{width}}  {bar(region.share)} {100 * region.share:5.1f}%")
    typer.echo(f"{'all':<{width}}  {bar(total_share)} {100 * total_share:5.1f}%")


def plot_map(regions: list[Region], title: str, path: Path) -> None:
    """A bar chart of the share kept per page or stretch, written to `path` (PNG, SVG, PDF).

    Raises:
        typer.BadParameter: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise typer.BadParameter(
            "drawing needs matplotlib: pip install matplotlib", param_hint="--plot"
        ) from None
    fig, ax = plt.subplots(figsize=(max(6.0, min(18.0, len(regions) * 0.25)), 3.2))
    ax.bar(range(len(regions)), [100 * r.share for r in regions], width=0.9, color="#4477aa")
    ax.set_ylabel("kept (%)")
    ax.set_xlabel("page" if regions and regions[0].label.startswith("p.") else "1k-token stretch")
    step = max(1, len(regions) // 20)
    ax.set_xticks(range(0, len(regions), step))
    ax.set_xticklabels([str(i + 1) for i in range(0, len(regions), step)])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
