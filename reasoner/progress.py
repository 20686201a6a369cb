"""Progress bars for long work (rich), quiet when there is no description or no terminal wanted."""
from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str | None, total: int | None = None) -> Iterable[T]:
    if description is None:
        return items
    from rich.progress import track

    return track(items, description=description, total=total, transient=False)
