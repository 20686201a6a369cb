"""Final-answer extraction and mathematical equivalence, for RL rewards, voting and the pipeline.

Design: plain numbers (the bulk of GRPO checks) are compared in-process with exact fractions, in
microseconds. Everything else goes to math-verify, which runs in a small pool of persistent child
processes (_math_worker.py) with its own signal.alarm timeouts switched off. Each check gets a
deadline here; a worker that misses it is killed and replaced. A thread with a deadline could not
stop a runaway sympy computation, and signal.alarm only works in the main thread, whereas a process
can always be killed and works from any thread.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3.0
MAX_ANSWER_CHARS = 2000  # a longer "answer" is a failed extraction, not something worth parsing
_WORKER_START_TIMEOUT_S = 60.0  # importing sympy on a loaded 2-core machine can take seconds

# ---------------------------------------------------------------- extraction

_ANSWER_PHRASE = re.compile(r"(?:final\s+answer|\banswer)\**\s*(?:is\b\s*:?|:)\**[ \t]*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_BRACE = re.compile(r"[{}]")


def extract_answer(completion: str) -> str | None:
    """The model's final answer: last <answer>, else last \\boxed{}, else "answer is", else "#### n".

    Text inside <think> never counts. Returns None when there is no answer.
    """
    try:
        text = _strip_thinking(completion)
        tagged = _last_answer_tag(text)
        if tagged is not None:
            return _unwrap(_from_marked_text(tagged) or tagged)
        found = _from_marked_text(text)
        return _unwrap(found) if found else None
    except Exception:  # never let a strange string take down a reward loop
        return None


def _strip_thinking(text: str) -> str:
    open_tag, close_tag = "<think>", "</think>"
    first_close, first_open = text.find(close_tag), text.find(open_tag)
    # Chat templates often put <think> in the prompt, so the completion starts mid-thought.
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        text = text[first_close + len(close_tag):]
    kept, pos = [], 0
    while True:  # str.find, not a regex: stays linear on "<think><think><think>..."
        start = text.find(open_tag, pos)
        if start == -1:
            kept.append(text[pos:])
            break
        kept.append(text[pos:start])
        end = text.find(close_tag, start)
        if end == -1:  # never closed: the model was still thinking when it stopped
            break
        pos = end + len(close_tag)
    return "".join(kept)


def _last_answer_tag(text: str) -> str | None:
    start = text.rfind("<answer>")
    if start == -1:
        return None
    body = text[start + len("<answer>"):]
    end = body.find("</answer>")
    # Generation often stops on the "</answer>" stop string, which is then not in the text.
    return (body if end == -1 else body[:end]).strip()


def _from_marked_text(text: str) -> str | None:
    for extract in (_last_boxed, _after_answer_phrase, _after_hashes):
        found = extract(text)
        if found:
            return found
    return None


def _last_boxed(text: str) -> str | None:
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    closing = _matching_braces(text)  # once per text: rescanning per box is quadratic on "\\boxed{" * 5000
    end = len(text)
    while True:
        start, command = max((text.rfind(command, 0, end), command) for command in ("\\boxed", "\\fbox"))
        if start == -1:
            return None
        content = _box_argument(text, start + len(command), closing)
        if content is not None:
            return content
        end = start  # unbalanced (truncated) box: try the one before


def _matching_braces(text: str) -> dict[int, int]:
    closing, open_positions = {}, []
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            open_positions.append(brace.start())
        elif open_positions:
            closing[open_positions.pop()] = brace.start()
    return closing


def _box_argument(text: str, pos: int, closing: dict[int, int]) -> str | None:
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text):
        return None
    if text[pos] != "{":  # "\\boxed 5"
        token = re.match(r"[^\s$]+", text[pos:pos + MAX_ANSWER_CHARS])
        return token.group(0) if token else None
    return text[pos + 1:closing[pos]] if pos in closing else None


def _after_answer_phrase(text: str) -> str | None:
    last = None
    for last in _ANSWER_PHRASE.finditer(text):
        pass
    if last is None:
        return None
    line = text[last.end():].split("\n", 1)[0]
    sentence_end = _SENTENCE_END.search(line)
    return (line[:sentence_end.start()] if sentence_end else line).strip() or None


def _after_hashes(text: str) -> str | None:
    start = text.rfind("####")
    if start == -1:
        return None
    return text[start + 4:].split("\n", 1)[0].strip() or None


def _unwrap(answer: str) -> str:
    """Drops the wrapping a model puts around an answer: $…$, \\(…\\), a box, a final period."""
    answer = answer.strip()
    boxed = _last_boxed(answer)
    if boxed is not None:
        answer = boxed.strip()
    for left, right in (("$$", "$$"), ("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            answer = answer[len(left):-len(right)].strip()
            break
    return answer.rstrip(".").strip()


# ---------------------------------------------------------------- equivalence

_CURRENCY = re.compile(r"\\?\$")
# "18 eggs", "5\text{ cm}", "3 km per hour": words after a number are a unit, except constants like pi.
_UNIT_SUFFIX = re.compile(r"(?<=[\d.])\s*(?:\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z ./-]*\}|(?!pi\b)[A-Za-z]{2,}(?:[ /-]+[A-Za-z]+)*)$")
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\\,|\\!|\{,\})(?=\d{3}(?!\d))")  # 1\,234 and 1{,}234
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def _plain_number(answer: str) -> Fraction | None:
    """1234, -3, 1,234.00, $12, 0.5 → an exact value; anything else → None (math-verify's job)."""
    text = _CURRENCY.sub("", answer).strip().rstrip(".")
    text = _LATEX_THOUSANDS.sub(",", _UNIT_SUFFIX.sub("", text))
    if not text or not any(c.isdigit() for c in text) or not _PLAIN_NUMBER.fullmatch(text):
        return None
    return Fraction(text.replace(",", ""))


def answers_equal(reference: str, candidate: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether two extracted answers are mathematically equal. reference plays math-verify's gold."""
    try:
        reference, candidate = reference.strip(), candidate.strip()
        if not reference or not candidate:
            return False
        if reference == candidate:
            return True
        if max(len(reference), len(candidate)) > MAX_ANSWER_CHARS:
            return False
        ref_value, cand_value = _plain_number(reference), _plain_number(candidate)
        if ref_value is not None and cand_value is not None:
            return ref_value == cand_value
        return _POOL.equal(reference, candidate, timeout)
    except Exception:
        log.debug("answer comparison failed", exc_info=True)
        return False


def check_answer(completion: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the completion's final answer equals gold. gold may be bare ("18") or marked
    ("#### 18", a solution with \\boxed{}). Never raises; anything unusable is False."""
    try:
        predicted = extract_answer(completion)
        if predicted is None or not isinstance(gold, str):
            return False
        reference = extract_answer(gold) or _unwrap(gold)
        return answers_equal(reference, predicted, timeout)
    except Exception:
        return False


# ---------------------------------------------------------------- math-verify worker pool


class _Worker:
    """One math-verify child process, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_math_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the caller's Ctrl-C must not kill it mid-answer
        )
        self._buffer = b""
        if self._read_line(time.monotonic() + _WORKER_START_TIMEOUT_S) != "ready":
            self.kill()
            raise RuntimeError("math-verify worker did not start")

    def equal(self, gold: str, pred: str, timeout: float) -> bool | None:
        """True/False, or None when the deadline passed (the worker is then dead)."""
        self.proc.stdin.write(json.dumps([gold, pred]).encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._read_line(time.monotonic() + timeout)
        if reply is None:
            self.kill()
            return None
        return reply == "1"

    def _read_line(self, deadline: float) -> str | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:  # the worker died (e.g. out of memory)
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class _WorkerPool:
    """Idle workers shared by threads; at most max_workers alive, started on first need."""

    def __init__(self, max_workers: int) -> None:
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], bool] = {}

    def equal(self, gold: str, pred: str, timeout: float) -> bool:
        key = (gold, pred)
        if key in self._cache:
            return self._cache[key]
        with self._slots:
            worker = self._take()
            try:
                result = worker.equal(gold, pred, timeout)
            except OSError:  # broken pipe: the worker died between checks
                worker.kill()
                result = None
            self._give_back(worker)
        if result is None:
            log.warning("answer check gave up after %.1fs: %.80r vs %.80r", timeout, gold, pred)
            return False  # not cached: a timeout under load may succeed later
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
        return _Worker()

    def _give_back(self, worker: _Worker) -> None:
        if worker.alive():
            with self._lock:
                self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


_POOL = _WorkerPool(max_workers=max(1, min(4, os.cpu_count() or 1)))
atexit.register(_POOL.close)
