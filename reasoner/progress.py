"""Progress bars for long work (rich), quiet when there is no description or no terminal wanted; and
`printable`, which every terminal view passes untrusted text through."""
from __future__ import annotations

import re
from typing import Iterable, TypeVar

T = TypeVar("T")

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides/isolates that reorder
# what a reader sees (Trojan Source). Model output, problems and trace fields are untrusted: an ESC in them
# could set the terminal title, clear the screen or hide text.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_ALL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text, keep_layout: bool = True) -> str:
    """`text` with control characters shown as visible escapes (ESC -> `\\x1b`), safe to print to a terminal.

    keep_layout=True leaves newline and tab alone (multi-line answers, code); False escapes them too (one line).
    """
    text = text if isinstance(text, str) else str(text)
    return (_UNPRINTABLE if keep_layout else _UNPRINTABLE_ALL).sub(_escape, text)


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
