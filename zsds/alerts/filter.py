"""Safe alert filter expressions over candidate fields, e.g. ``rb >= 0.65 and nbad == 0``.

The expression is parsed with :mod:`ast` and evaluated by walking the tree; allowed are
comparisons (``< <= > >= == !=``), ``and``/``or``/``not``, unary ``-``/``+``, ``+ - * /``,
``abs(x)``, numbers, strings, ``None``/``True``/``False`` and names of ``candidate`` fields.
Anything else (attributes, subscripts, other calls, lambdas, ``__import__`` ...) is rejected
with :class:`FilterError`. A comparison with a null field is false.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ZsdsError
from .schema import record_fields

__all__ = ["FilterError", "compile_filter"]

_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


class FilterError(ZsdsError):
    """A filter expression is not allowed or not valid."""


def _check(node: ast.AST, fields: set[str], expr: str) -> None:
    if isinstance(node, ast.Expression):
        return _check(node.body, fields, expr)
    if isinstance(node, ast.BoolOp):
        return [_check(v, fields, expr) for v in node.values] and None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        return _check(node.operand, fields, expr)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        _check(node.left, fields, expr)
        return _check(node.right, fields, expr)
    if isinstance(node, ast.Compare) and all(type(o) in _CMP for o in node.ops):
        return [_check(v, fields, expr) for v in [node.left, *node.comparators]] and None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == "abs" and len(node.args) == 1 and not node.keywords:
        return _check(node.args[0], fields, expr)
    if isinstance(node, ast.Constant) and (node.value is None
                                           or isinstance(node.value, (int, float, str))):
        return None
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        if node.id not in fields:
            raise FilterError(f"filter {expr!r}: {node.id!r} is not a candidate field")
        return None
    raise FilterError(f"filter {expr!r}: {type(node).__name__} not allowed "
                      f"(only comparisons, and/or/not, arithmetic, abs(), fields, constants)")


def _eval(node: ast.AST, cand: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.BoolOp):
        vals = (_eval(v, cand) for v in node.values)
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, cand)
        if isinstance(node.op, ast.Not):
            return not v
        return None if v is None else (-v if isinstance(node.op, ast.USub) else +v)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, cand), _eval(node.right, cand)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            return None  # arithmetic on numbers only (no 'x' * 10**9)
        try:
            return _BIN[type(node.op)](a, b)
        except (ZeroDivisionError, TypeError):
            return None
    if isinstance(node, ast.Compare):
        left = _eval(node.left, cand)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, cand)
            if left is None or right is None:
                return False
            try:
                if not _CMP[type(op)](left, right):
                    return False
            except TypeError:
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        v = _eval(node.args[0], cand)
        return None if v is None else abs(v)
    if isinstance(node, ast.Constant):
        return node.value
    return cand.get(node.id)


def compile_filter(expr: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over a candidate dict; ``None``/empty expression accepts everything.

    Raises
    ------
    FilterError
        If the expression is not valid Python syntax or uses anything not allowed.
    """
    if not expr or not expr.strip():
        return lambda cand: True
    if len(expr) > 2000:
        raise FilterError("filter expression longer than 2000 characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"filter {expr!r}: syntax error: {exc.msg}") from None
    _check(tree, {n for n, _ in record_fields("candidate")}, expr)
    body = tree.body
    return lambda cand: bool(_eval(body, cand))
