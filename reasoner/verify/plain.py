"""Plain data across the sandbox boundary: what a candidate's function returned, as text, and back.

`encode` runs inside the sandbox (its source is pasted into the harness): it writes a value as a
Python literal, accepting only the exact builtin types (None, bool, int, float, complex, str, bytes,
list, tuple, dict, set, frozenset); a subclass, or any object with its own __eq__ or __bool__, is
refused, so an always-equal object can never come out as a match. `decode` runs in the trusted
process and accepts only that literal grammar (no names, no calls but float('inf'), set(),
frozenset(...) and complex(re, im)), so whatever text the candidate forges, the parent gets plain
builtin values whose comparison no candidate code takes part in.
"""
from __future__ import annotations

import ast
import inspect


def encode(value, _depth=0):
    """value as a Python literal of builtin types only; TypeError for anything else."""
    kind = type(value)
    if _depth > 100:
        raise ValueError("nested too deep")
    if value is None or value is True or value is False:
        return "None" if value is None else "True" if value is True else "False"
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        if value != value:
            return "float('nan')"
        if value in (float("inf"), float("-inf")):
            return "float('inf')" if value > 0 else "float('-inf')"
        return float.__repr__(value)
    if kind is str:
        return str.__repr__(value)
    if kind is bytes:
        return bytes.__repr__(value)
    if kind is complex:
        return f"complex({encode(value.real, _depth + 1)}, {encode(value.imag, _depth + 1)})"
    if kind is list:
        return "[" + ", ".join([encode(item, _depth + 1) for item in value]) + "]"
    if kind is tuple:
        items = [encode(item, _depth + 1) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if kind is dict:
        return "{" + ", ".join([f"{encode(k, _depth + 1)}: {encode(v, _depth + 1)}" for k, v in value.items()]) + "}"
    if kind is set or kind is frozenset:
        items = "{" + ", ".join([encode(item, _depth + 1) for item in value]) + "}" if value else ""
        text = items if kind is set and value else f"{kind.__name__}({items})"
        return text
    if getattr(kind, "__module__", "") == "numpy" and hasattr(value, "tolist"):
        return encode(value.tolist(), _depth + 1)  # a numpy scalar or array: its plain-data form, checked again
    raise TypeError(f"not plain data: {getattr(kind, '__name__', '?')}")


ENCODER_SOURCE = inspect.getsource(encode)

_SCALARS = (int, float, complex, str, bytes, bool, type(None))
_SPECIAL_FLOATS = {"inf", "-inf", "+inf", "nan", "infinity", "-infinity"}


def decode(text: str, max_chars: int = 1 << 20):
    """The plain value `text` writes; ValueError for anything outside the literal grammar."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise ValueError("not a plain value")
    try:
        node = ast.parse(text.strip(), mode="eval").body
        return _plain(node)
    except (SyntaxError, RecursionError, MemoryError, TypeError) as error:
        raise ValueError(f"not a plain value: {error}") from None


def _plain(node: ast.AST):
    if isinstance(node, ast.Constant):
        if type(node.value) in _SCALARS:
            return node.value
        raise ValueError("constant")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _plain(node.operand)
        if type(operand) not in (int, float, complex):
            raise ValueError("sign")
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.List):
        return [_plain(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_plain(item) for item in node.elts)
    if isinstance(node, ast.Set):
        return {_plain(item) for item in node.elts}
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError("dict unpacking")
        return {_plain(key): _plain(value) for key, value in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name, args = node.func.id, node.args
        if name == "float" and len(args) == 1 and isinstance(args[0], ast.Constant) \
                and isinstance(args[0].value, str) and args[0].value.lower() in _SPECIAL_FLOATS:
            return float(args[0].value)
        if name in ("set", "frozenset") and len(args) <= 1:
            items = _plain(args[0]) if args else ()
            if type(items) not in (set, list, tuple):
                raise ValueError(name)
            return set(items) if name == "set" else frozenset(items)
        if name == "complex" and len(args) == 2:
            real, imag = _plain(args[0]), _plain(args[1])
            if type(real) not in (int, float) or type(imag) not in (int, float):
                raise ValueError("complex")
            return complex(real, imag)
    raise ValueError(f"not plain data: {type(node).__name__}")



# The judge (a separate process in the sandbox, with no access to this package) decodes the program's replies
# with this same grammar: its source is pasted there, as `encode`'s is into the harness.
DECODER_SOURCE = (f"import ast\n_SCALARS = (int, float, complex, str, bytes, bool, type(None))\n"
                  f"_SPECIAL_FLOATS = {sorted(_SPECIAL_FLOATS)!r}\n\n" + inspect.getsource(decode) + "\n\n"
                  + inspect.getsource(_plain))
