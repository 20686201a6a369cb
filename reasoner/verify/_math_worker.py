"""Child process that judges answer equivalence with math-verify (see answers.py for why).

Protocol, one JSON line each way: ["gold", "pred"] in, 1 or 0 out. "ready" is printed once the
heavy imports are done, so the parent can tell start-up time from checking time.
Run by path with the parent's interpreter; it needs only math-verify, not the reasoner package.
"""
import json
import logging
import os
import signal
import sys

_MEMORY_LIMIT_BYTES = 2 << 30


def _die_with_parent() -> None:
    # A check stuck in sympy never reads stdin, so EOF alone would not stop it when the parent dies.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: EOF on stdin still ends the loop
        pass
    if os.getppid() == 1:
        sys.exit(0)


def _limit_memory() -> None:
    # 9^{9^{9^{9}}} makes sympy allocate gigabytes within the check deadline; fail with MemoryError instead.
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):
        pass


def main() -> None:
    _die_with_parent()
    _limit_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the parent's terminal is the parent's business
    logging.disable(logging.CRITICAL)  # math-verify warns on every failed parse; the answer is just "0"
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    cache: dict[str, list] = {}

    def parsed(answer: str) -> list:
        # \boxed{} makes math-verify take the whole string as the answer instead of hunting inside it.
        # Timeouts off: signal.alarm is the parent's job here, done by killing this process.
        if answer not in cache:
            if len(cache) > 4096:
                cache.clear()
            cache[answer] = parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)
        return cache[answer]

    print("ready", flush=True)
    for line in sys.stdin:
        try:
            gold, pred = json.loads(line)
            equal = bool(verify(parsed(gold), parsed(pred), timeout_seconds=None))
        except Exception:
            equal = False
        sys.stdout.write("1\n" if equal else "0\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
