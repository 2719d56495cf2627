"""A tiny, safe filter language for table rows: ``--where 'calcified==1 and diameter_mm>=8'``.

Nothing is evaluated as Python: the text is tokenized and parsed by a recursive-descent parser into
closures over the row (see :func:`parse_where` for the grammar).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cxrkit.errors import InputError

_TOKEN = re.compile(r"""\s*(?:
    (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'[^']*'|"[^"]*")
  | (?P<op>==|!=|<=|>=|<|>|=|\(|\))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
)""", re.VERBOSE)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_KEYWORDS = {"and", "or", "not", "true", "false"}

Predicate = Callable[[dict[str, Any]], bool]


def parse_where(text: str, *, columns: Sequence[str] | Any = ()) -> Predicate:
    """Compile a row filter such as ``calcified==1 and diameter_mm>=8``.

    Grammar (no Python is evaluated; anything else is a syntax error)::

        expr  := and ("or" and)*
        and   := not ("and" not)*
        not   := "not" not | cmp
        cmp   := value (op value)*       op: == = != < <= > >=   (chains like 4 <= d < 10)
        value := number | 'string' | "string" | true | false | column | "(" expr ")"

    Values compare as numbers when both sides are numbers (``"1"`` == 1); otherwise as
    strings. A bare value is true when it is a non-zero number or a non-empty string.

    Args:
        text: the expression.
        columns: the allowed column names; empty allows any (checked per row).

    Returns:
        A function ``row -> bool`` over dicts of column values.

    Raises:
        InputError: a syntax error or an unknown column, with the position.
    """
    if not text.strip():
        raise InputError("--where: empty expression")
    parser = _Parser(text, set(columns))
    predicate = parser.expr()
    if parser.pos != len(parser.tokens):
        raise parser.fail(f"unexpected {parser.tokens[parser.pos][1]!r}")
    return predicate


_HINT = "use columns, numbers, 'strings', == != < <= > >=, and/or/not, ()"


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule (see :func:`parse_where`).

    Each rule returns a closure over a row; nothing else is ever called on the input.
    """

    def __init__(self, text: str, allowed: set[str]) -> None:
        self.text = text
        self.tokens = list(_tokenize(text))
        self.allowed = allowed
        self.pos = 0

    def fail(self, message: str) -> InputError:
        at = self.tokens[self.pos][2] if self.pos < len(self.tokens) else len(self.text)
        return InputError(f"--where: {message} at character {at + 1}: {self.text!r}",
                          hint=_HINT)

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> bool:
        tok = self.peek()
        if tok and tok[0] == kind and (value is None or tok[1].lower() == value):
            self.pos += 1
            return True
        return False

    def expr(self) -> Predicate:
        parts = [self.conjunction()]
        while self.take("name", "or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda row: any(p(row) for p in parts))

    def conjunction(self) -> Predicate:
        parts = [self.negation()]
        while self.take("name", "and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else (lambda row: all(p(row) for p in parts))

    def negation(self) -> Predicate:
        if self.take("name", "not"):
            inner = self.negation()
            return lambda row: not inner(row)
        return self.comparison()

    def comparison(self) -> Predicate:
        values = [self.value()]
        ops: list[str] = []
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in _COMPARE:
            self.pos += 1
            ops.append(tok[1])
            values.append(self.value())
        if not ops:
            first = values[0]
            return lambda row: _truthy(first(row))
        return lambda row: _chain(ops, [v(row) for v in values])

    def value(self) -> Callable[[dict[str, Any]], Any]:
        tok = self.peek()
        if tok is None:
            raise self.fail("unexpected end")
        kind, text, _ = tok
        if kind == "op" and text == "(":
            self.pos += 1
            inner = self.expr()
            if not self.take("op", ")"):
                raise self.fail("expected ')'")
            return inner
        if kind == "number":
            number = float(text)
            self.pos += 1
            return lambda row: number
        if kind == "string":
            string = text[1:-1]
            self.pos += 1
            return lambda row: string
        if kind == "name" and text.lower() in ("true", "false"):
            flag = 1.0 if text.lower() == "true" else 0.0
            self.pos += 1
            return lambda row: flag
        if kind == "name" and text.lower() not in _KEYWORDS:
            if self.allowed and text not in self.allowed:
                raise self.fail(f"unknown column {text!r} "
                                f"(columns: {', '.join(sorted(self.allowed))})")
            self.pos += 1
            return lambda row: _column(row, text)
        raise self.fail(f"unexpected {text!r}")


def _tokenize(text: str) -> Iterator[tuple[str, str, int]]:
    """``(kind, text, offset)`` tokens; any other character is an error."""
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            return
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            bad = len(text) - len(text[pos:].lstrip())
            raise InputError(f"--where: unexpected character {text[bad]!r} at character "
                             f"{bad + 1}: {text!r}", hint=_HINT)
        kind = match.lastgroup or ""
        yield kind, match.group(kind), match.start(kind)
        pos = match.end()


def _column(row: dict[str, Any], name: str) -> Any:
    if name not in row:
        raise InputError(f"--where: unknown column {name!r}",
                         hint="columns: " + ", ".join(sorted(row)))
    return row[name]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _truthy(value: Any) -> bool:
    number = _number(value)
    return bool(number) if number is not None else bool(str(value))


def _chain(ops: list[str], values: list[Any]) -> bool:
    for op, left, right in zip(ops, values, values[1:], strict=False):
        a, b = _number(left), _number(right)
        pair = (a, b) if a is not None and b is not None else (str(left), str(right))
        if not _COMPARE[op](*pair):
            return False
    return True
