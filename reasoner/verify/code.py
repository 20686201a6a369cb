"""Grading model-written code: pull the program out of a completion, run its functions in the sandbox,
and decide in this (trusted) process whether the results are right.

The candidate's program never sees an expected value, and nothing it does decides its score: it
only answers calls. (Before issue #13 the tests ran in the candidate's own interpreter, after its
code, with a token printed on stdout as the pass mark: a program could neuter exec, print the
token read from its own file, or return an object equal to anything.) A test is graded in one of
three ways, the first that applies:

  parsed     `assert f(3) == 11`, `assert abs(candidate(x) - y) < 1e-6`, `assert not f([])`, ... and
             HumanEval `check(candidate)` bodies made only of such asserts: each call of the
             candidate's functions (a *hole*) is evaluated in the sandbox, its result comes back as
             plain data (reasoner.verify.plain: builtin types only, so an always-equal object cannot
             cross), and the rest of the assert is evaluated here on plain values by a small
             evaluator (literals, arithmetic, comparisons, a few pure builtins and math functions).
  recorded   HumanEval checks with loops and helpers: the calls and the canonical solution's results,
             recorded once in the sandbox and shipped in humaneval_expected.json
             (`python -m reasoner.verify.humaneval_cache` rebuilds it); the candidate's result for
             each recorded call must equal the canonical one.
  judged     anything else: the test runs in a second, trusted interpreter inside the same sandbox
             (sandbox.run_python(judge=...)), forked before the candidate, untraceable by it, and the
             only holder of the verdict pipe; the candidate's functions are reached from it by
             message, plain data both ways. The program's objects stay in its process: the judge
             holds them by number and may call their methods (s = Stack(); s.push(1)), but never
             compares, hashes or tests them for truth. Stdlib modules the test names are the judge's.
             HumanEval/32 and /33 run this way, with the prompt and canonical solution as trusted
             helpers (poly, sort_third); other tests' helper names resolve to the program's.

All of a completion's tests run in one sandboxed process (one interpreter start per completion); a
test that raises, hangs or returns something unserialisable loses only itself (a hang also loses
the tests after it, as it ends the run). A program can still lie about its own answers (print
result lines itself, patch its own harness): that only ever changes what it answered, which is
compared with values it never saw.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from reasoner.verify.answers import _last_answer_tag, _strip_thinking
from reasoner.verify.plain import DECODER_SOURCE, ENCODER_SOURCE, decode
from reasoner.verify.sandbox import ExecResult, run_many

_PYTHON_TAGS = {"python", "py", "python3"}
_OUTPUT_BYTES = 1 << 20  # room for the results after whatever the candidate prints
_CACHE_FILE = Path(__file__).with_name("humaneval_expected.json")

# ---------------------------------------------------------------- the candidate's side

_HARNESS = '''

def _reasoner_answer(holes, token, aliases, encoder):
    # Builtins as they were before the program ran (the sandbox keeps a copy), so a program that
    # shadows or patches print, eval, type... does not break its own grading by accident.
    try:
        b = __reasoner_builtins__
    except NameError:
        import builtins
        b = vars(builtins)
    import os
    write, fail = os.write, b["BaseException"]
    scope = {{"__builtins__": b}}
    b["exec"](encoder, scope)
    encode, type_of, evaluate = scope["encode"], b["type"], b["eval"]

    def send(fd, text):
        data = text.encode("utf-8", "surrogatepass")
        while data:
            data = data[write(fd, data):]

    names = b["dict"](b["globals"]())
    for alias, target in aliases:
        if target in names:
            names[alias] = names[target]
    for index, source in b["enumerate"](holes):
        try:
            line = "ok:" + encode(evaluate(source, names))
        except fail as error:
            line = "err:" + type_of(error).__name__
        send(1, f"\\n{{token}}:{{index}}:{{line}}\\n")
    channel = os.environ.get("REASONER_RPC")
    if not channel:
        return
    reading, writing = (b["int"](fd) for fd in channel.split(","))
    handles = []  # the program's objects the judge holds by number (it can only call their methods)
    literals = {{"__builtins__": {{}}, "float": b["float"], "set": b["set"], "frozenset": b["frozenset"],
                "complex": b["complex"], "__handle__": handles.__getitem__}}

    def answer(value, functions_too):
        if functions_too and b["callable"](value):
            return "fn"
        try:
            return "ok\\t" + encode(value)
        except b["TypeError"]:
            handles.append(value)
            return f"obj\\t{{b['len'](handles) - 1}}"

    for request in os.fdopen(reading, "rb"):
        op, name, *rest = request.decode().rstrip("\\n").split("\\t")
        try:
            if op == "get":
                reply = answer(names[name], True)
            elif op == "attr":
                reply = answer(b["getattr"](handles[b["int"](name)], rest[0]), True)
            else:
                target = names[name] if op == "call" else b["getattr"](handles[b["int"](name)], rest.pop(0))
                args, kwargs = evaluate(rest[0], literals), evaluate(rest[1], literals)
                reply = answer(target(*args, **kwargs), False)
        except fail as error:
            reply = "err\\t" + type_of(error).__name__
        send(writing, reply.replace("\\n", " ") + "\\n")


_reasoner_answer({holes!r}, {token!r}, {aliases!r}, {encoder!r})
'''

# ---------------------------------------------------------------- the judge (trusted, in the sandbox)

_JUDGE = '''
import ast, builtins, importlib, os, sys

{encoder}
{decoder}

class RemoteError(Exception):
    pass


_pending = b""


def _exchange(line):
    global _pending
    data = (line + "\\n").encode()
    while data:
        data = data[os.write(_REQUEST_FD, data):]
    while b"\\n" not in _pending:
        chunk = os.read(_RESPONSE_FD, 1 << 16)
        if not chunk:
            raise RemoteError("the program is gone")
        _pending += chunk
    reply, _, _pending = _pending.partition(b"\\n")
    return reply.decode()


def _value(reply, function):
    if reply.startswith("ok\\t"):
        return decode(reply[3:])
    if reply.startswith("obj\\t"):
        return RemoteObject(int(reply[4:]))
    if reply == "fn" and function is not None:
        return function
    raise RemoteError(reply)


class Remote:
    """One of the program's functions (or, with handle, a method of one of its objects)."""

    def __init__(self, name, handle=None):
        self.name, self.handle = name, handle

    def __call__(self, *args, **kwargs):
        target = f"call\\t{{self.name}}" if self.handle is None else f"callattr\\t{{self.handle}}\\t{{self.name}}"
        return _value(_exchange(f"{{target}}\\t{{encode(args)}}\\t{{encode(kwargs)}}"), None)

    def __repr__(self):
        return f"<the program's {{self.name}}>"


class RemoteObject:
    """An object of the program's, held by number: its methods and attributes can be used, nothing else
    (no ==, no truth value, no hash): only plain data is ever compared here."""

    def __init__(self, handle):
        object.__setattr__(self, "_handle", handle)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _value(_exchange(f"attr\\t{{self._handle}}\\t{{name}}"), Remote(name, self._handle))

    def _refuse(self, *_):
        raise TypeError("the program returned an object, not plain data")

    __eq__ = __ne__ = __bool__ = __hash__ = __lt__ = __le__ = __gt__ = __ge__ = __setattr__ = _refuse

    def __repr__(self):
        return "<the program's object>"


_strict_encode = encode


def encode(value, _depth=0):  # the program's objects go back to it as references
    if type(value) is RemoteObject:
        return f"__handle__({{object.__getattribute__(value, '_handle')}})"
    return _strict_encode(value, _depth)


def _bound(name):
    try:
        return _value(_exchange(f"get\\t{{name}}"), Remote(name))
    except RemoteError:
        raise NameError(name) from None


def _free_names(tree):
    loaded, defined = set(), set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
    return sorted(loaded - defined)


def _judge(index, source, entry, prelude):
    names = {{"__name__": "__test__", "__builtins__": builtins}}
    if prelude:
        exec(compile(prelude, "<prelude>", "exec"), names)
    tree = ast.parse(source)
    for name in _free_names(tree):
        if name in names:
            continue
        if name in getattr(sys, "stdlib_module_names", ()):  # `math` the program imported: our own copy
            try:
                names[name] = importlib.import_module(name)
                continue
            except ImportError:
                pass
        try:
            names[name] = _bound(name)
        except NameError:
            pass
    exec(compile(tree, f"<test {{index}}>", "exec"), names)
    if entry is not None:
        names["check"](Remote(entry))


for _index, _source, _entry, _prelude in {tests!r}:
    try:
        _judge(_index, _source, _entry, _prelude)
    except BaseException as _error:
        continue
    os.write(_VERDICT_FD, f"{{_index}}\\n".encode())
'''


# ---------------------------------------------------------------- public API


def extract_code(completion: str) -> str | None:
    """The last fenced python block of the answer (after any <think>), else the whole answer."""
    if not isinstance(completion, str):
        return None
    text = _strip_thinking(completion)
    text = _last_answer_tag(text) or text
    blocks = text.split("```")[1::2]  # an unclosed last fence (truncated output) still counts
    tagged, untagged = [], []
    for block in blocks:
        first_line, _, body = block.partition("\n")
        language = first_line.strip().lower()
        (tagged if language in _PYTHON_TAGS else untagged if not language else []).append(body)
    chosen = tagged[-1] if tagged else untagged[-1] if untagged else text
    return chosen.strip("\n") or None


def check_code(
    completion: str, tests: str | Sequence[str], entry_point: str | None = None, timeout: float = 10.0
) -> float:
    """Fraction of tests the completion's program passes, for the code reward.

    tests: assertion snippets graded one by one, or a single string (one test); a test that defines
    `check(candidate)` (HumanEval style) is called with entry_point.
    """
    return check_code_many([completion], [tests], [entry_point], timeout)[0]


def check_code_many(
    completions: Sequence[str],
    tests: Sequence[str | Sequence[str]],
    entry_points: Sequence[str | None],
    timeout: float = 10.0,
) -> list[float]:
    """check_code over a batch, run in parallel on all cores."""
    jobs = [_job(completion, test, entry) for completion, test, entry in zip(completions, tests, entry_points)]
    runnable = [job for job in jobs if job is not None]
    results = iter(run_many([job.program for job in runnable], timeout, judges=[job.judge for job in runnable],
                            max_output_bytes=_OUTPUT_BYTES))
    return [0.0 if job is None else _score(job, next(results)) for job in jobs]


def _score(job: "_Job", result: ExecResult) -> float:
    try:
        return job.score(result)
    except Exception:  # never let a strange answer take the whole batch down
        return 0.0


# ---------------------------------------------------------------- one completion's run


@dataclass
class _Job:
    program: str
    judge: str | None
    token: str
    plans: list  # one per test: _Parsed, _Recorded or _Judged
    holes: list[str] = field(default_factory=list)

    def score(self, result: ExecResult) -> float:
        answers = _answers(result.stdout, self.token)
        judged = {line.strip() for line in result.verdict.splitlines()}
        passed = sum(bool(plan.passed(answers, judged)) for plan in self.plans)
        return passed / len(self.plans)


def _job(completion: str, tests: str | Sequence[str], entry_point: str | None) -> _Job | None:
    code = extract_code(completion)
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not code or not tests:
        return None
    holes: list[str] = []
    aliases: set[tuple[str, str]] = set()
    plans, judged = [], []
    for index, test in enumerate(tests):
        try:
            plan = _plan(test, entry_point)
        except Exception:  # a test this module cannot take apart: the judge runs it as it is
            plan = _Judged(entry_point if entry_point and isinstance(test, str) and "def check(" in test else None)
        if isinstance(plan, _Judged):
            plan.index = index
            judged.append((index, test, plan.entry, plan.prelude))
        else:
            plan.first = len(holes)
            holes.extend(plan.holes)
            if plan.alias and entry_point:
                aliases.add((plan.alias, entry_point))
        plans.append(plan)
    if entry_point:
        aliases.add(("candidate", entry_point))
    token = secrets.token_hex(8)
    program = code + _HARNESS.format(encoder=ENCODER_SOURCE, holes=holes, token=token, aliases=sorted(aliases))
    judge = _JUDGE.format(encoder=ENCODER_SOURCE, decoder=DECODER_SOURCE, tests=judged) if judged else None
    return _Job(program, judge, token, plans, holes)


def _answers(stdout: str, token: str) -> dict[int, tuple[bool, object]]:
    """Hole index -> (returned normally, plain value); the last line for an index counts."""
    answers = {}
    prefix = token + ":"
    for line in stdout.splitlines():
        if not line.startswith(prefix):
            continue
        index, _, rest = line[len(prefix):].partition(":")
        status, _, payload = rest.partition(":")
        if not index.isdigit():
            continue
        if status == "ok":
            try:
                answers[int(index)] = (True, decode(payload))
            except ValueError:
                answers[int(index)] = (False, None)
        else:
            answers[int(index)] = (False, None)
    return answers


# ---------------------------------------------------------------- the three kinds of test


@dataclass
class _Parsed:
    """Asserts over holes, evaluated here; all must hold."""
    holes: list[str]
    asserts: list[ast.expr]  # each hole replaced by Name(f"__hole_{n}")
    alias: str | None = None  # the check's parameter name, bound to the entry point in the sandbox
    first: int = 0

    def passed(self, answers, judged) -> bool:
        values = {}
        for n in range(len(self.holes)):
            ok, value = answers.get(self.first + n, (False, None))
            values[f"__hole_{n}"] = value if ok else _RAISED  # raises only where the assert reaches it
        try:
            return all(_evaluate(node, values) for node in self.asserts)
        except Exception:
            return False


@dataclass
class _Recorded:
    """HumanEval calls with the canonical solution's results (the cache)."""
    holes: list[str]
    expected: list
    tolerance: float | None = None
    alias: str | None = "candidate"
    first: int = 0

    def passed(self, answers, judged) -> bool:
        for n, expected in enumerate(self.expected):
            ok, value = answers.get(self.first + n, (False, None))
            if not ok or not _same(value, expected, self.tolerance):
                return False
        return True


@dataclass
class _Judged:
    entry: str | None  # call check(<the program's entry point>) after the test's code
    prelude: str | None = None  # trusted code run before the test in the judge (HumanEval helpers)
    index: int = -1
    holes: tuple = ()
    alias: None = None

    def passed(self, answers, judged) -> bool:
        return str(self.index) in judged


def _same(value, expected, tolerance) -> bool:
    if tolerance is not None and type(value) in (int, float) and type(expected) in (int, float):
        return abs(value - expected) <= tolerance
    if tolerance is not None and type(value) is type(expected) and type(value) in (list, tuple):
        return len(value) == len(expected) and all(_same(a, b, tolerance) for a, b in zip(value, expected))
    return value == expected


@functools.lru_cache(maxsize=4096)
def _plan_cached(test: str, entry_point: str | None):
    if entry_point and "def check(" in test:
        cached = _humaneval_cache().get(_digest(test))
        if cached is not None and cached["entry_point"] == entry_point:
            if cached["compare"] == "judge":
                return ("judged", entry_point, cached["prelude"])
            return ("recorded", [f"candidate(*{args}, **{kwargs})" for args, kwargs in cached["calls"]],
                    [decode(value) for value in cached["expected"]], cached.get("tolerance"))
        parsed = _parse_check(test)
        return ("parsed", *parsed) if parsed else ("judged", entry_point, None)
    parsed = _parse_asserts(test)
    return ("parsed", *parsed, None) if parsed else ("judged", None, None)


def _plan(test: str, entry_point: str | None):
    kind, *rest = _plan_cached(test, entry_point)
    if kind == "parsed":
        holes, asserts, alias = rest
        return _Parsed(list(holes), list(asserts), alias)
    if kind == "recorded":
        holes, expected, tolerance = rest
        return _Recorded(list(holes), expected, tolerance)
    return _Judged(*rest)


def _digest(test: str) -> str:
    return hashlib.sha256(test.encode("utf-8", "surrogatepass")).hexdigest()


@functools.lru_cache(maxsize=1)
def _humaneval_cache() -> dict:
    try:
        return json.loads(_CACHE_FILE.read_text())["problems"]
    except (OSError, ValueError, KeyError):
        return {}


# ---------------------------------------------------------------- parsing asserts into holes

_SAFE_FUNCTIONS = {
    "abs": abs, "len": len, "sorted": sorted, "set": set, "frozenset": frozenset, "list": list, "tuple": tuple,
    "dict": dict, "str": str, "int": int, "float": float, "bool": bool, "round": round, "min": min, "max": max,
    "sum": sum, "any": any, "all": all, "isinstance": isinstance, "type": type, "repr": repr, "complex": complex,
    "bytes": bytes, "reversed": reversed, "enumerate": enumerate, "zip": zip, "range": range,
}
_SAFE_MATH = {name: getattr(math, name) for name in (
    "isclose", "fabs", "sqrt", "floor", "ceil", "isnan", "isinf", "isfinite", "inf", "nan", "pi", "e", "log",
    "exp", "trunc", "gcd", "comb", "factorial", "prod", "hypot", "copysign")}
_NO_OPS = {"print", "pass"}
_RAISED = object()  # a hole whose call raised (or never answered)
_MAX_SIZE = 10_000_000


def _parse_asserts(test: str, callee: str | None = None):
    """(holes, asserts) when `test` is only asserts the evaluator can finish, else None.

    callee: when set (a check's parameter), only calls of that name are holes; otherwise a call of
    any name that is not one of the evaluator's builtins is the candidate's.
    """
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return _parse_statements(tree.body, callee, test)


def _parse_statements(body: list[ast.stmt], callee: str | None, source: str):
    holes: list[str] = []
    asserts: list[ast.expr] = []
    for statement in body:
        if isinstance(statement, ast.Assert):
            node = _with_holes(statement.test, holes, callee, source)
            if node is None:
                return None
            asserts.append(node)
        elif isinstance(statement, ast.Pass):
            continue
        elif isinstance(statement, ast.Expr) and (
            isinstance(statement.value, ast.Constant)
            or isinstance(statement.value, ast.Name) and statement.value.id in _NO_OPS
        ):
            continue  # a docstring, a bare `print`
        elif isinstance(statement, ast.Import) and all(a.name == "math" and a.asname is None for a in statement.names):
            continue
        else:
            return None
    if not asserts:
        return None
    return tuple(holes), tuple(asserts)


def _parse_check(test: str):
    """(holes, asserts, parameter) for a HumanEval check made only of asserts, else None."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError):
        return None
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    for node in tree.body:
        if node in checks or isinstance(node, (ast.Pass, ast.Import)) and _only_math(node):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets) \
                and _is_literal(node.value):
            continue  # METADATA = {...}
        return None
    if len(checks) != 1:
        return None
    check = checks[0]
    arguments = check.args
    if len(arguments.args) != 1 or arguments.vararg or arguments.kwarg or arguments.kwonlyargs or check.decorator_list:
        return None
    parameter = arguments.args[0].arg
    parsed = _parse_statements(check.body, parameter, test)
    return (*parsed, parameter) if parsed else None


def _only_math(node: ast.stmt) -> bool:
    return isinstance(node, ast.Pass) or all(a.name == "math" and a.asname is None for a in node.names)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return False


def _with_holes(node: ast.expr, holes: list[str], callee: str | None, source: str) -> ast.expr | None:
    """node with the candidate's calls replaced by hole names (in place), or None if it needs a judge."""
    ok = True
    lines = _lines(source)

    class Holes(ast.NodeTransformer):
        def visit_Call(self, call):
            if _is_safe_function(call.func):
                return self.generic_visit(call)
            root = call.func
            while isinstance(root, (ast.Attribute, ast.Call, ast.Subscript)):
                root = root.func if isinstance(root, ast.Call) else root.value
            if not isinstance(root, ast.Name) or (callee is not None and root.id != callee) \
                    or (callee is None and root.id in _SAFE_FUNCTIONS):
                nonlocal ok
                ok = False
                return call
            segment = _segment(lines, call)
            holes.append(f"({segment})" if segment else ast.unparse(call))
            return ast.copy_location(ast.Name(id=f"__hole_{len(holes) - 1}", ctx=ast.Load()), call)

    try:
        new = Holes().visit(node)
    except (SyntaxError, ValueError, RecursionError):
        return None
    if not ok or not _evaluable(new):
        return None
    return new


@functools.lru_cache(maxsize=64)
def _lines(source: str) -> list[bytes]:
    return source.encode("utf-8", "surrogatepass").splitlines(keepends=True)


def _segment(lines: list[bytes], node: ast.expr) -> str | None:
    """The node's source text (ast.get_source_segment, without splitting the source again per node)."""
    try:
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:
            text = lines[first][node.col_offset:node.end_col_offset]
        else:
            text = lines[first][node.col_offset:] + b"".join(lines[first + 1:last]) + lines[last][:node.end_col_offset]
        return text.decode("utf-8", "surrogatepass")
    except (TypeError, IndexError, UnicodeDecodeError):
        return None


def _is_safe_function(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in _SAFE_FUNCTIONS
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math" \
        and func.attr in _SAFE_MATH


_EVALUABLE = (
    ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.Name, ast.Load, ast.UnaryOp, ast.BinOp, ast.BoolOp,
    ast.Compare, ast.Call, ast.keyword, ast.Attribute, ast.Subscript, ast.Slice, ast.IfExp,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)


def _evaluable(node: ast.expr) -> bool:
    for child in ast.walk(node):
        if not isinstance(child, _EVALUABLE):
            return False
        if isinstance(child, ast.Name) and not (child.id.startswith("__hole_") or child.id in _SAFE_FUNCTIONS
                                                 or child.id == "math"):
            return False
        if isinstance(child, ast.Attribute) and not (isinstance(child.value, ast.Name) and child.value.id == "math"
                                                      and child.attr in _SAFE_MATH):
            return False
        if isinstance(child, ast.Call) and not _is_safe_function(child.func):
            return False
        if isinstance(child, (ast.List, ast.Tuple, ast.Set)) and any(isinstance(e, ast.Starred) for e in child.elts):
            return False
    return True


# ---------------------------------------------------------------- evaluating asserts on plain values

_BINARY = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a ** b, ast.BitAnd: lambda a, b: a & b, ast.BitOr: lambda a, b: a | b,
    ast.BitXor: lambda a, b: a ^ b, ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
}
_COMPARE = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b,
}


def _evaluate(node: ast.expr, holes: dict):
    """The value of an assert's expression; only plain builtin values ever reach an operator."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in holes:
            if holes[node.id] is _RAISED:
                raise ValueError("the call raised, hung or returned something that is not plain data")
            return holes[node.id]
        if node.id == "math":
            raise ValueError("bare math")
        return _SAFE_FUNCTIONS[node.id]
    if isinstance(node, ast.Attribute):
        return _SAFE_MATH[node.attr]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_evaluate(item, holes) for item in node.elts]
        return list(items) if isinstance(node, ast.List) else tuple(items) if isinstance(node, ast.Tuple) else set(items)
    if isinstance(node, ast.Dict):
        return {_evaluate(k, holes): _evaluate(v, holes) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, holes)
        if isinstance(node.op, ast.Not):
            return not operand
        return {ast.USub: lambda v: -v, ast.UAdd: lambda v: +v, ast.Invert: lambda v: ~v}[type(node.op)](operand)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, holes), _evaluate(node.right, holes)
        _guard_size(node.op, left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.BoolOp):
        value = None
        for item in node.values:
            value = _evaluate(item, holes)
            if isinstance(node.op, ast.And) and not value or isinstance(node.op, ast.Or) and value:
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, holes)
        for op, comparator in zip(node.ops, node.comparators):
            right = _evaluate(comparator, holes)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body if _evaluate(node.test, holes) else node.orelse, holes)
    if isinstance(node, ast.Subscript):
        return _evaluate(node.value, holes)[_evaluate(node.slice, holes)]
    if isinstance(node, ast.Slice):
        return slice(*(None if part is None else _evaluate(part, holes) for part in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Call):
        function = _evaluate(node.func, holes)
        args = [_evaluate(arg, holes) for arg in node.args]
        kwargs = {keyword.arg: _evaluate(keyword.value, holes) for keyword in node.keywords}
        if any(callable(arg) and arg not in _SAFE_FUNCTIONS.values() for arg in (*args, *kwargs.values())):
            raise ValueError("a function as an argument")
        if function is range and any(isinstance(a, int) and abs(a) > _MAX_SIZE for a in args):
            raise ValueError("range too large")
        return function(*args, **kwargs)
    raise ValueError(f"cannot evaluate {type(node).__name__}")


def _guard_size(op: ast.operator, left, right) -> None:
    """Keeps a test's constant expression from eating this process's memory (e.g. [0] * 10**10)."""
    if isinstance(op, ast.Pow) and isinstance(right, int) and isinstance(left, int) and abs(left) > 1 \
            and right * max(abs(left).bit_length(), 1) > 1_000_000:
        raise ValueError("power too large")
    if isinstance(op, ast.LShift) and isinstance(right, int) and right > 1_000_000:
        raise ValueError("shift too large")
    if isinstance(op, ast.Mult):
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(count, int) \
                    and len(sequence) * count > _MAX_SIZE:
                raise ValueError("repetition too large")



