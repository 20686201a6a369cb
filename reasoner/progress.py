"""Progress bars for long work (rich), quiet when there is no description or no terminal wanted."""
from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str | None, total: int | None = None) -> Iterable[T]:
    if description is None:
        return items
    from rich.progress import track

    return track(items, description=description, total=total, transient=False)


def quiet_libraries() -> None:
    """Keep our own progress bars; drop the per-file bars and warnings libraries print on every load/save."""
    import warnings

    import datasets
    import transformers

    import os

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if "TRANSFORMERS_VERBOSITY" not in os.environ:  # a user who asks for the library's logs gets them
        transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")
