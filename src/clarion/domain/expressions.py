"""A small, safe expression language for routing conditions.

Tenants write conditions such as::

    event.data.order.total >= 100 and user.attributes.tier in ["gold", "platinum"]

The source is tokenized and parsed here by hand (no `eval`, no Python AST) into frozen
dataclasses, and evaluated over a context of JSON-like values. Nothing in an expression can reach
a Python attribute, call a function outside `FUNCTIONS`, loop, or allocate beyond what its own
size allows, so evaluation costs at most a few steps per node (plus the length of the strings and
lists it compares).

Grammar, loosest binding first::

    expression  := or
    or          := and ("or" and)*
    and         := not ("and" not)*
    not         := "not" not | comparison
    comparison  := operand [ ("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand ]
    operand     := literal | list | call | path | "(" expression ")"
    list        := "[" [ expression ("," expression)* [","] ] "]"
    call        := NAME "(" [ expression ("," expression)* ] ")"        (NAME in FUNCTIONS)
    path        := NAME ( "." NAME | "[" (INT | STRING) "]" )*
    literal     := STRING | INT | FLOAT | "true" | "false" | "null"

Strings take single or double quotes and JSON's escapes (``\\\\ \\" \\/ \\b \\f \\n \\r \\t
\\uXXXX``, surrogate pairs joined) plus ``\\'``;
numbers may carry a leading ``-`` (there is no arithmetic). Comparisons do not chain.

Semantics:

- a path that leads nowhere (missing key, index out of range, a step into a scalar) is ``null``;
  keys are only ever dictionary keys, so ``event.__class__`` is just a key that is not there;
- ``==`` and ``!=`` compare as JSON does: ``1 == 1.0`` but ``1 != true`` and ``"1" != 1``;
- ``< <= > >=`` order two numbers or two strings (by code point); any other pair is ``false``;
- ``x in c`` is element equality for a list, substring for two strings, key presence for an
  object, and ``false`` otherwise; ``x not in c`` is its negation;
- ``and``, ``or`` and ``not`` read truthiness the JSON way (``null``, ``false``, ``0``, ``""``,
  ``[]`` and ``{}`` are false), short-circuit, and yield booleans.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal as TypingLiteral, TypeAlias

from clarion.domain.errors import InvalidRequest

MAX_SOURCE_LENGTH: Final = 2_000
"""Characters in one expression: a routing condition is a line or two, and the bound keeps a
stored rule small enough to re-parse on every router start."""

MAX_DEPTH: Final = 64
"""Nesting (parentheses, lists, calls, ``not``): far beyond anything a person writes, and far
below Python's recursion limit, so neither the parser nor the evaluator can overflow the stack."""

MAX_NODES: Final = 500
"""Syntax-tree nodes in one expression: bounds evaluation, which visits each node at most once."""

MAX_GLOB_PATTERN_LENGTH: Final = 1_000
"""A `glob` pattern longer than this matches nothing: wildcard matching costs up to text length
times pattern length, and a pattern can come from event data."""

Value: TypeAlias = bool | int | float | str | list[Any] | tuple[Any, ...] | dict[str, Any] | None
"""What an expression yields: a JSON-like value (tuples are read as lists)."""

Step: TypeAlias = str | int
"""One step of a path: a dictionary key or a list index (negative counts from the end)."""

CompareOp: TypeAlias = TypingLiteral["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


# --- the syntax tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Constant:
    """A literal scalar: string, number, boolean or null."""

    value: bool | int | float | str | None

    # `True == 1 == 1.0` in Python; two literals are the same only if their JSON types are too.
    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Constant)
            and type(self.value) is type(other.value)
            and self.value == other.value
        )

    def __hash__(self) -> int:
        return hash((type(self.value).__name__, self.value))


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list literal ``[a, b, ...]``; its items may be any expressions."""

    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Path:
    """A field path such as ``event.data.items[0].sku``: a root name, then keys and indexes."""

    root: str
    steps: tuple[Step, ...] = ()

    @property
    def parts(self) -> tuple[Step, ...]:
        """The root and the steps, as one tuple."""
        return (self.root, *self.steps)

    def startswith(self, *prefix: Step) -> bool:
        """Whether this path lies under `prefix` (``Path("user", ("attributes", "tier"))``
        starts with ``("user", "attributes")``)."""
        return self.parts[: len(prefix)] == prefix

    def __str__(self) -> str:
        text = self.root
        for step in self.steps:
            if isinstance(step, int):
                text += f"[{step}]"
            elif _is_name(step):
                text += f".{step}"
            else:
                text += f"[{_quote(step)}]"
        return text


@dataclass(frozen=True, slots=True)
class Compare:
    """A comparison or membership test between two operands."""

    op: CompareOp
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Not:
    """Boolean negation."""

    operand: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    """``and`` or ``or`` over two or more operands (a chain is flattened into one node)."""

    op: TypingLiteral["and", "or"]
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Call:
    """A call of one of the allowed `FUNCTIONS`."""

    name: str
    args: tuple[Node, ...]


Node: TypeAlias = Constant | ListOf | Path | Compare | Not | BoolOp | Call


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression: its source, its syntax tree and the paths it reads.

    Two expressions are equal (and hash alike) when their sources are, so they can key a cache.
    """

    source: str
    tree: Node = field(compare=False, repr=False)
    paths: tuple[Path, ...] = field(compare=False, repr=False)
    """Every field path the expression reads, in order of appearance, each once."""

    def reads(self, *prefix: Step) -> bool:
        """Whether any path the expression reads lies under `prefix`, e.g.
        ``reads("user", "attributes")``: the router loads a user's attributes only when needed."""
        return any(path.startswith(*prefix) for path in self.paths)

    def __str__(self) -> str:
        return self.source


# --- functions ---------------------------------------------------------------------------------


def glob_match(text: str, pattern: str) -> bool:
    """Whether `text` matches `pattern`, where ``*`` is any run of characters (dots included),
    ``?`` is any one character and everything else, ``[`` too, stands for itself. Case-sensitive.

    A two-pointer scan rather than a regex: no compilation, no cache to fill, no backtracking
    blow-up; at worst len(text) x len(pattern) steps.
    """
    t = p = 0
    star = -1  # position in pattern just after the last '*' seen
    resume = 0  # position in text that '*' currently stretches to
    while t < len(text):
        if p < len(pattern) and pattern[p] != "*" and (pattern[p] == "?" or pattern[p] == text[t]):
            t += 1
            p += 1
        elif p < len(pattern) and pattern[p] == "*":
            star = p + 1
            resume = t
            p += 1
        elif star != -1:
            resume += 1
            t = resume
            p = star
        else:
            return False
    return all(ch == "*" for ch in pattern[p:])


def _fn_lower(x: object) -> Value:
    return x.lower() if isinstance(x, str) else None


def _fn_upper(x: object) -> Value:
    return x.upper() if isinstance(x, str) else None


def _fn_len(x: object) -> Value:
    return len(x) if isinstance(x, str | list | tuple | dict) else None


def _fn_startswith(x: object, prefix: object) -> Value:
    return isinstance(x, str) and isinstance(prefix, str) and x.startswith(prefix)


def _fn_endswith(x: object, suffix: object) -> Value:
    return isinstance(x, str) and isinstance(suffix, str) and x.endswith(suffix)


def _fn_glob(x: object, pattern: object) -> Value:
    return (
        isinstance(x, str)
        and isinstance(pattern, str)
        and len(pattern) <= MAX_GLOB_PATTERN_LENGTH
        and glob_match(x, pattern)
    )


_CALLABLES: Final[dict[str, Callable[..., Value]]] = {
    "lower": _fn_lower,
    "upper": _fn_upper,
    "len": _fn_len,
    "startswith": _fn_startswith,
    "endswith": _fn_endswith,
    "glob": _fn_glob,
}

FUNCTIONS: Final[Mapping[str, int]] = {
    "exists": 1,  # exists(path): the key is present, even if its value is null
    "lower": 1,  # a string in lower case; null for anything else
    "upper": 1,
    "len": 1,  # length of a string, list or object; null for anything else
    "startswith": 2,  # both strings and the first starts with the second; else false
    "endswith": 2,
    "glob": 2,  # glob(text, pattern) with `glob_match`; false unless both are strings
}
"""The functions an expression may call, with their number of arguments."""


# --- tokens ------------------------------------------------------------------------------------

_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_COMPARISONS: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_PUNCTUATION: Final = frozenset({"(", ")", "[", "]", ",", "."})
_DIGITS: Final = frozenset("0123456789")
# JSON's escapes, and \' for single-quoted strings: any JSON string literal is a string here.
_ESCAPES: Final = {
    "\\": "\\",
    '"': '"',
    "'": "'",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_HEX: Final = frozenset("0123456789abcdefABCDEF")

TokenKind: TypeAlias = TypingLiteral["name", "string", "number", "op", "end"]


@dataclass(frozen=True, slots=True)
class _Token:
    kind: TokenKind
    text: str  # the name or operator; the decoded string; the number's source
    value: str | int | float | None
    column: int  # 1-based, as people count

    def describe(self) -> str:
        if self.kind == "end":
            return "end of expression"
        if self.kind == "string":
            return f"string {_quote(self.text[:20])}"
        return repr(self.text[:20])


def _is_name_start(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def _is_name_char(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _is_name(text: str) -> bool:
    return (
        bool(text)
        and _is_name_start(text[0])
        and all(_is_name_char(c) for c in text)
        and text not in _KEYWORDS
    )


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else ch)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _fail(message: str, column: int, expected: str | None = None) -> InvalidRequest:
    details: dict[str, Any] = {"column": column}
    if expected is not None:
        details["expected"] = expected
    return InvalidRequest(f"{message} at column {column}", **details)


def _tokens(source: str) -> Iterator[_Token]:
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        column = i + 1
        if ch.isspace():
            i += 1
        elif _is_name_start(ch):
            j = i + 1
            while j < n and _is_name_char(source[j]):
                j += 1
            yield _Token("name", source[i:j], None, column)
            i = j
        elif ch in _DIGITS or (ch == "-" and i + 1 < n and source[i + 1] in _DIGITS):
            token, i = _number(source, i)
            yield token
        elif ch in ('"', "'"):
            token, i = _string(source, i)
            yield token
        elif source.startswith(("==", "!=", "<=", ">="), i):
            yield _Token("op", source[i : i + 2], None, column)
            i += 2
        elif ch in "<>" or ch in _PUNCTUATION:
            yield _Token("op", ch, None, column)
            i += 1
        elif ch == "=":
            raise _fail("'=' is not an operator: compare with '=='", column, "'=='")
        elif ch == "-":
            raise _fail("'-' may only start a number: there is no arithmetic", column, "a number")
        else:
            shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
            raise _fail(f"unexpected character {shown}", column)
    yield _Token("end", "", None, n + 1)


def _number(source: str, start: int) -> tuple[_Token, int]:
    n = len(source)
    j = start + 1 if source[start] == "-" else start
    while j < n and source[j] in _DIGITS:
        j += 1
    is_float = False
    if j < n and source[j] == "." and j + 1 < n and source[j + 1] in _DIGITS:
        is_float = True
        j += 1
        while j < n and source[j] in _DIGITS:
            j += 1
    if j < n and source[j] in "eE":
        k = j + 1
        if k < n and source[k] in "+-":
            k += 1
        if k < n and source[k] in _DIGITS:
            is_float = True
            j = k
            while j < n and source[j] in _DIGITS:
                j += 1
    if j < n and (_is_name_char(source[j]) or source[j] == "."):
        raise _fail(f"malformed number {source[start : j + 1]!r}", start + 1, "a number")
    text = source[start:j]
    value: int | float
    try:
        value = float(text) if is_float else int(text)
    except ValueError:  # e.g. more digits than int() converts
        raise _fail(f"number {text[:20]!r} is out of range", start + 1) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"number {text[:20]!r} is out of range", start + 1)
    return _Token("number", text, value, start + 1), j


def _string(source: str, start: int) -> tuple[_Token, int]:
    quote = source[start]
    n = len(source)
    out: list[str] = []
    j = start + 1
    while True:
        if j >= n:
            raise _fail("unterminated string", start + 1, f"closing {quote}")
        ch = source[j]
        if ch == quote:
            break
        if ch != "\\":
            out.append(ch)
            j += 1
            continue
        if j + 1 >= n:
            raise _fail("unterminated string", start + 1, f"closing {quote}")
        escape = source[j + 1]
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            j += 2
        elif escape == "u":
            code = _hex4(source, j)
            j += 6
            if 0xD800 <= code <= 0xDBFF and source.startswith("\\u", j):
                low = _hex4(source, j)
                if 0xDC00 <= low <= 0xDFFF:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    j += 6
            if 0xD800 <= code <= 0xDFFF:
                raise _fail("lone surrogate in \\u escape", j - 5, "a Unicode scalar value")
            out.append(chr(code))
        else:
            raise _fail(
                f"unknown escape \\{escape}",
                j + 1,
                "one of \\\\ \\\" \\' \\/ \\b \\f \\n \\r \\t \\uXXXX",
            )
    text = "".join(out)
    return _Token("string", text, text, start + 1), j + 1


def _hex4(source: str, at: int) -> int:
    digits = source[at + 2 : at + 6]
    if len(digits) != 4 or not all(c in _HEX for c in digits):
        raise _fail("malformed \\u escape", at + 1, "four hexadecimal digits")
    return int(digits, 16)


# --- the parser --------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the token list, one method per grammar rule.

    Nesting is counted as it is entered, so a ``((((…`` or ``not not not …`` past `MAX_DEPTH` is
    refused long before Python's own recursion limit; nodes are counted as they are made.
    """

    def __init__(self, source: str, roots: frozenset[str] | None) -> None:
        self.tokens = list(_tokens(source))
        self.at = 0
        self.roots = roots
        self.depth = 0
        self.nodes = 0
        self.paths: dict[Path, None] = {}

    @property
    def token(self) -> _Token:
        return self.tokens[self.at]

    def advance(self) -> _Token:
        token = self.tokens[self.at]
        if token.kind != "end":
            self.at += 1
        return token

    def is_op(self, text: str) -> bool:
        return self.token.kind == "op" and self.token.text == text

    def is_keyword(self, word: str) -> bool:
        return self.token.kind == "name" and self.token.text == word

    def expect_op(self, text: str) -> None:
        if not self.is_op(text):
            raise _fail(
                f"expected {text!r}, found {self.token.describe()}", self.token.column, repr(text)
            )
        self.advance()

    def enter(self, column: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fail(f"expression nested deeper than {MAX_DEPTH} levels", column)

    def made(self, node: Node, column: int) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _fail(f"expression has more than {MAX_NODES} parts", column)
        return node

    def parse(self) -> Node:
        tree = self.expression()
        if self.token.kind != "end":
            raise _fail(
                f"expected an operator or the end, found {self.token.describe()}",
                self.token.column,
                "'and', 'or', a comparison or the end",
            )
        return tree

    def expression(self) -> Node:
        return self.boolean("or", self.conjunction)

    def conjunction(self) -> Node:
        return self.boolean("and", self.negation)

    def boolean(self, word: TypingLiteral["and", "or"], operand: Callable[[], Node]) -> Node:
        column = self.token.column
        operands = [operand()]
        while self.is_keyword(word):
            self.advance()
            operands.append(operand())
        if len(operands) == 1:
            return operands[0]
        return self.made(BoolOp(word, tuple(operands)), column)

    def negation(self) -> Node:
        # A loop, not recursion, so a long run of `not` costs no stack; each still counts as depth.
        columns: list[int] = []
        while self.is_keyword("not"):
            columns.append(self.token.column)
            self.enter(self.token.column)
            self.advance()
        node = self.comparison()
        for column in reversed(columns):
            node = self.made(Not(node), column)
        self.depth -= len(columns)
        return node

    def comparison(self) -> Node:
        left = self.operand()
        column = self.token.column
        op = self.comparison_op()
        if op is None:
            return left
        right = self.operand()
        if self.comparison_op(peek=True) is not None:
            raise _fail(
                "comparisons do not chain: join them with 'and'", self.token.column, "'and'"
            )
        return self.made(Compare(op, left, right), column)

    def comparison_op(self, *, peek: bool = False) -> CompareOp | None:
        token = self.token
        if token.kind == "op" and token.text in _COMPARISONS:
            op: CompareOp = token.text  # type: ignore[assignment]  # membership checked above
        elif self.is_keyword("in"):
            op = "in"
        elif self.is_keyword("not"):
            following = self.tokens[self.at + 1]
            if not (following.kind == "name" and following.text == "in"):
                raise _fail(
                    f"expected 'in' after 'not', found {following.describe()}",
                    following.column,
                    "'in'",
                )
            op = "not in"
        else:
            return None
        if not peek:
            self.advance()
            if op == "not in":
                self.advance()
        return op

    def operand(self) -> Node:
        token = self.token
        column = token.column
        if token.kind in ("string", "number"):
            self.advance()
            return self.made(Constant(token.value), column)
        if token.kind == "op" and token.text == "(":
            self.enter(column)
            self.advance()
            inner = self.expression()
            self.expect_op(")")
            self.depth -= 1
            return inner
        if token.kind == "op" and token.text == "[":
            return self.list_of()
        if token.kind == "name":
            if token.text in ("true", "false", "null"):
                self.advance()
                value = {"true": True, "false": False, "null": None}[token.text]
                return self.made(Constant(value), column)
            if token.text in _KEYWORDS:
                raise _fail(f"expected a value, found {token.describe()}", column, "a value")
            if self.tokens[self.at + 1].kind == "op" and self.tokens[self.at + 1].text == "(":
                return self.call()
            return self.path()
        raise _fail(f"expected a value, found {token.describe()}", column, "a value")

    def list_of(self) -> Node:
        column = self.token.column
        self.enter(column)
        self.advance()
        items: list[Node] = []
        while not self.is_op("]"):
            items.append(self.expression())
            if self.is_op(","):
                self.advance()
            elif not self.is_op("]"):
                raise _fail(
                    f"expected ',' or ']', found {self.token.describe()}",
                    self.token.column,
                    "',' or ']'",
                )
        self.advance()
        self.depth -= 1
        return self.made(ListOf(tuple(items)), column)

    def call(self) -> Node:
        name_token = self.advance()
        name, column = name_token.text, name_token.column
        arity = FUNCTIONS.get(name)
        if arity is None:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise _fail(f"unknown function {name!r} (there are: {allowed})", column, allowed)
        self.enter(column)
        self.advance()  # the "("
        args: list[Node] = []
        while not self.is_op(")"):
            if args:
                self.expect_op(",")
            args.append(self.expression())
        self.advance()
        self.depth -= 1
        if len(args) != arity:
            plural = "argument" if arity == 1 else "arguments"
            raise _fail(
                f"{name}() takes {arity} {plural}, not {len(args)}", column, f"{arity} {plural}"
            )
        if name == "exists" and not isinstance(args[0], Path):
            raise _fail("exists() takes a field path", column, "a field path")
        return self.made(Call(name, tuple(args)), column)

    def path(self) -> Node:
        token = self.advance()
        column = token.column
        if self.roots is not None and token.text not in self.roots:
            allowed = ", ".join(sorted(self.roots))
            raise _fail(
                f"unknown name {token.text!r} (paths start with: {allowed})", column, allowed
            )
        steps: list[Step] = []
        while True:
            if self.is_op("."):
                self.advance()
                if self.token.kind != "name":
                    raise _fail(
                        f"expected a field name after '.', found {self.token.describe()}",
                        self.token.column,
                        "a field name",
                    )
                # After a dot any name is a key, keywords included: `event.data.in` is fine.
                steps.append(self.advance().text)
            elif self.is_op("["):
                self.advance()
                index = self.token
                if index.kind == "string" or (index.kind == "number" and type(index.value) is int):
                    assert isinstance(index.value, str | int)
                    steps.append(index.value)
                    self.advance()
                else:
                    raise _fail(
                        f"expected an integer or a string index, found {index.describe()}",
                        index.column,
                        "an integer or a string",
                    )
                self.expect_op("]")
            else:
                break
            if len(steps) > MAX_DEPTH:
                raise _fail(f"path longer than {MAX_DEPTH} steps", column)
        if self.is_op("("):
            raise _fail(
                f"{Path(token.text, tuple(steps))} cannot be called", self.token.column, "a value"
            )
        path = Path(token.text, tuple(steps))
        self.paths[path] = None
        return self.made(path, column)


def parse(source: str, *, roots: frozenset[str] | None = None) -> Expression:
    """Parse `source` into an `Expression`.

    `roots`, when given, are the names a path may start with (for routing conditions:
    ``event`` and ``user``), so a misspelt ``evnt.type`` is refused when the rule is saved
    rather than quietly reading null forever.

    Raises:
        InvalidRequest: the source is too long, too deep, too large or not in the grammar; the
            message names the 1-based column and what was expected there, and so do the
            error's details (``column``, ``expected``).
    """
    if len(source) > MAX_SOURCE_LENGTH:
        raise InvalidRequest(
            f"expression longer than {MAX_SOURCE_LENGTH} characters",
            column=MAX_SOURCE_LENGTH + 1,
        )
    return _parse(source, roots)


@functools.lru_cache(maxsize=1024)
def _parse(source: str, roots: frozenset[str] | None) -> Expression:
    # Rules are re-read on every router start and on each `/v1/rules/test`; the sources repeat.
    parser = _Parser(source, roots)
    if parser.tokens[0].kind == "end":
        raise _fail("empty expression", 1, "a value")
    tree = parser.parse()
    return Expression(source, tree, tuple(parser.paths))


def parse_path(source: str, *, roots: frozenset[str] | None = None) -> Path:
    """Parse `source` as a single field path (e.g. a digest's key ``event.data.thread_id``).

    Raises:
        InvalidRequest: the source is not one field path.
    """
    expression = parse(source, roots=roots)
    if not isinstance(expression.tree, Path):
        raise InvalidRequest("expected a field path such as event.data.id", column=1)
    return expression.tree


# --- evaluation --------------------------------------------------------------------------------

_MISSING: Final = object()


def _step(current: object, step: Step) -> object:
    if isinstance(step, str):
        if isinstance(current, dict):
            return current.get(step, _MISSING)
        return _MISSING
    if isinstance(current, list | tuple) and -len(current) <= step < len(current):
        return current[step]
    return _MISSING


def _walk(path: Path, context: Mapping[str, object]) -> object:
    current: object = context.get(path.root, _MISSING) if isinstance(context, Mapping) else _MISSING
    for step in path.steps:
        if current is _MISSING:
            break
        current = _step(current, step)
    return current


def _plain(value: object) -> Value:
    # Only JSON-like values are let through; anything else in a context is read as null, so an
    # expression can never make an unknown object run its own __eq__, __lt__ or __len__.
    if value is None or isinstance(value, bool | int | float | str | list | tuple | dict):
        return value
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: object, b: object) -> bool:
    """JSON equality, with an explicit stack so deeply nested data cannot overflow recursion."""
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        x, y = _plain(x), _plain(y)
        if _is_number(x) and _is_number(y):
            if x != y:
                return False
        elif isinstance(x, list | tuple) and isinstance(y, list | tuple):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, dict) and isinstance(y, dict):
            if len(x) != len(y) or any(key not in y for key in x):
                return False
            pending.extend((x[key], y[key]) for key in x)
        elif type(x) is not type(y) or x != y:
            # Same type left here means two bools, two strings or two nulls.
            return False
    return True


def _order(op: CompareOp, a: object, b: object) -> bool:
    if not (_is_number(a) and _is_number(b)) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    x: Any = a
    y: Any = b
    if op == "<":
        return bool(x < y)
    if op == "<=":
        return bool(x <= y)
    if op == ">":
        return bool(x > y)
    return bool(x >= y)


def _contains(container: object, item: object) -> bool:
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, list | tuple):
        return any(_equal(element, item) for element in container)
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    return False


def truthy(value: object) -> bool:
    """JSON truthiness: null, false, 0, 0.0, "", [] and {} are false; everything else true."""
    value = _plain(value)
    if value is None or value is False:
        return False
    if _is_number(value):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def _evaluate(node: Node, context: Mapping[str, object]) -> Value:
    if isinstance(node, Constant):
        return node.value
    if isinstance(node, Path):
        found = _walk(node, context)
        return None if found is _MISSING else _plain(found)
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(truthy(_evaluate(operand, context)) for operand in node.operands)
        return any(truthy(_evaluate(operand, context)) for operand in node.operands)
    if isinstance(node, Not):
        return not truthy(_evaluate(node.operand, context))
    if isinstance(node, Compare):
        left = _evaluate(node.left, context)
        right = _evaluate(node.right, context)
        if node.op == "==":
            return _equal(left, right)
        if node.op == "!=":
            return not _equal(left, right)
        if node.op == "in":
            return _contains(right, left)
        if node.op == "not in":
            return not _contains(right, left)
        return _order(node.op, left, right)
    if isinstance(node, ListOf):
        return [_evaluate(item, context) for item in node.items]
    if node.name == "exists":
        path = node.args[0]
        assert isinstance(path, Path)  # the parser lets nothing else through
        return _walk(path, context) is not _MISSING
    return _CALLABLES[node.name](*(_evaluate(arg, context) for arg in node.args))


def evaluate(expression: Expression, context: Mapping[str, object]) -> Value:
    """The value of `expression` over `context` (e.g. ``{"event": {...}, "user": {...}}``).

    Never raises for an expression `parse` returned: missing paths are null and mismatched
    types compare false. Values in `context` that are not JSON-like are read as null.
    """
    return _evaluate(expression.tree, context)


def holds(expression: Expression, context: Mapping[str, object]) -> bool:
    """Whether `expression` is true (by `truthy`) over `context`: how conditions are tested."""
    return truthy(evaluate(expression, context))
