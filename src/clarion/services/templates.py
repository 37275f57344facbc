"""Templates: which one a notification uses, and rendering it safely.

Tenants write templates; event data fills them. Both are untrusted, so rendering runs on Jinja2's
`ImmutableSandboxedEnvironment` with more fences than the sandbox has:

- **No internals.** Attribute access is an allowlist: a few read-only methods of ``str``,
  ``dict`` and ``list`` (event data is JSON), and Jinja's own loop, namespace and cycler
  objects. ``__class__``, ``__globals__``, ``mro``, ``format`` (whose widths allocate) and
  anything else resolve to a `SecurityError`. Only an allowlist of filters exists; ``safe``,
  ``format``, ``pprint``, ``xmlattr`` and ``random`` do not, nor ``{% include %}`` and friends
  (there is no loader).
- **Escaping.** HTML parts autoescape: ``{{ event.name }}`` is escaped. Data that *is* HTML goes
  through ``|trusted_html``, which runs it through ``nh3.clean`` (an allowlist sanitiser: no
  script, no event handlers, no ``javascript:`` URLs) before marking it safe. Markup in the
  template's own text is the tenant's and is kept. Text parts do not escape; subjects are
  folded onto one line.
- **Undefined values** are errors (`StrictUndefined`): a typo shows when the template is saved
  and tested, not as an empty greeting in a million emails. ``|default(...)`` and
  ``is defined`` state what may be missing.
- **Bounded work.** Jinja has no timeout, and a thread cannot be interrupted (a worker thread
  with a deadline would leave a runaway render burning a core, and one C-level
  ``"x" * 10**10`` cannot be stopped at all). So the cost is bounded *inside* the sandbox, by
  rewriting the parsed template (public API: `Environment.parse`, then `from_string` on the
  tree): every ``{% for %}`` iterable is wrapped to charge each iteration to a step budget, every
  call (macros, methods, ``range``) charges a step and counts call depth, and every piece of
  output, at any nesting (``{% set %}`` blocks and macro bodies included), charges its length
  to a work budget. The deadline is checked at each charge. Operators that allocate
  (``*``, ``+``, ``**``, ``%``, ``~``) and the filters that take a size (``center``,
  ``indent``, ``join``, ``replace``, ``wordwrap``, ``tojson``) check the size of what they
  would build *before* building it. A render that crosses a limit stops with
  `errors.InvalidRequest` saying which.

Rendering is synchronous and CPU-bound but bounded by `Limits.seconds`; callers on an event loop
may hand it to a worker thread. `Renderer` is thread-safe (the budget lives in a context
variable).
"""

from __future__ import annotations

import contextvars
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from threading import Lock
from typing import Any, Final, TypeVar

import nh3
from jinja2 import StrictUndefined, TemplateError, nodes, pass_eval_context
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.nodes import EvalContext
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace
from markupsafe import Markup

from clarion.domain import errors
from clarion.domain.templates import EmailTemplate, Subject, TemplateKey

T = TypeVar("T")

# --- which template ---------------------------------------------------------------------------
# `Subject`, `TemplateKey` and `EmailTemplate` live in domain/templates.py (the template store
# builds them too) and are re-exported here.


def normalize_locale(tag: str) -> str | None:
    """`tag` as ``ll`` or ``ll-RR`` (``pt_br`` -> ``pt-BR``, ``EN`` -> ``en``), or None when it
    is not a language tag. Script subtags are kept (``zh-Hant-TW``)."""
    parts = [p for p in re.split(r"[-_]", tag.strip()) if p]
    if not parts or not re.fullmatch(r"[A-Za-z]{2,3}", parts[0]):
        return None
    out = [parts[0].lower()]
    for part in parts[1:]:
        if re.fullmatch(r"[A-Za-z]{4}", part):
            out.append(part.title())
        elif re.fullmatch(r"[A-Za-z]{2}|\d{3}", part):
            out.append(part.upper())
        elif re.fullmatch(r"[A-Za-z0-9]{5,8}", part):
            out.append(part.lower())
        else:
            return None
    return "-".join(out)


def locale_candidates(user_locale: str | None, tenant_default: str) -> list[str]:
    """The locales to try, best first: the user's (``pt-BR``), its language alone (``pt``),
    the tenant's default, and that default's language; unreadable tags are skipped and no tag
    appears twice."""
    found: list[str] = []
    for tag in (user_locale, tenant_default):
        normal = normalize_locale(tag) if tag else None
        if normal is None:
            continue
        for candidate in (normal, normal.split("-")[0]):
            if candidate not in found:
                found.append(candidate)
    return found


def choose_template(
    templates: Mapping[TemplateKey, T],
    *,
    event_type: str,
    category: str | None,
    channel: str,
    user_locale: str | None,
    tenant_default_locale: str,
) -> tuple[TemplateKey, T] | None:
    """The template for one notification to one user, or None.

    Locales are tried in `locale_candidates` order; within each, the event type's template
    before the category's. So a user reading Portuguese gets the category's Portuguese template
    rather than the event type's English one: being readable beats being specific.
    """
    for locale in locale_candidates(user_locale, tenant_default_locale):
        keys = [TemplateKey(Subject.EVENT_TYPE, event_type, channel, locale)]
        if category:
            keys.append(TemplateKey(Subject.CATEGORY, category, channel, locale))
        for key in keys:
            if key in templates:
                return key, templates[key]
    return None


# --- limits -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """What one render may cost. The defaults fit a transactional email many times over.

    Attributes:
        template_chars: the largest template source (each part).
        output_chars: the largest rendered part.
        subject_chars: the longest subject (RFC 5322's line limit).
        value_chars: the largest string or list an operator or filter may build.
        work_chars: all text produced during a render, at every nesting level.
        steps: loop iterations plus calls.
        call_depth: nested calls (macro recursion).
        int_bits: the largest integer ``*`` and ``**`` may make.
        seconds: the wall-clock deadline, checked at every step and piece of output.
    """

    template_chars: int = 64 * 1024
    output_chars: int = 512 * 1024
    subject_chars: int = 998
    value_chars: int = 256 * 1024
    work_chars: int = 4 * 1024 * 1024
    steps: int = 100_000
    call_depth: int = 32
    int_bits: int = 4096
    seconds: float = 0.5


DEFAULT_LIMITS: Final = Limits()


class _LimitExceeded(Exception):
    pass


@dataclass(slots=True)
class _Budget:
    limits: Limits
    deadline: float
    timer: Callable[[], float]
    steps: int = 0
    work: int = 0
    depth: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.limits.steps:
            raise _LimitExceeded(f"the template took more than {self.limits.steps} steps")
        self.check_time()

    def charge(self, size: int) -> None:
        self.work += size
        if self.work > self.limits.work_chars:
            raise _LimitExceeded(
                f"the template produced more than {self.limits.work_chars} characters of work"
            )
        self.check_time()

    def check_time(self) -> None:
        if self.timer() > self.deadline:
            raise _LimitExceeded(f"the template took longer than {self.limits.seconds} s")

    def value(self, size: int) -> None:
        if size > self.limits.value_chars:
            raise _LimitExceeded(
                f"the template would build a value of {size} characters or items "
                f"(at most {self.limits.value_chars})"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "clarion_template_budget", default=None
)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:  # a template object used outside `Renderer`: refuse rather than run free
        raise _LimitExceeded("templates render only through Renderer")
    return budget


# --- the sandbox ------------------------------------------------------------------------------

_STR_METHODS: Final = frozenset(
    {
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "isalnum",
        "isalpha",
        "isdigit",
        "islower",
        "isspace",
        "isupper",
        "lower",
        "lstrip",
        "partition",
        "removeprefix",
        "removesuffix",
        "rfind",
        "rpartition",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "title",
        "upper",
        "striptags",
        "unescape",
    }
)
_MAPPING_METHODS: Final = frozenset({"get", "items", "keys", "values"})
_SEQUENCE_METHODS: Final = frozenset({"count", "index"})
_JINJA_OBJECTS: Final = (LoopContext, Namespace, Cycler, Joiner)
_SAFE_FILTERS: Final = frozenset(
    {
        "abs",
        "attr",
        "capitalize",
        "center",
        "count",
        "d",
        "default",
        "dictsort",
        "e",
        "escape",
        "filesizeformat",
        "first",
        "float",
        "forceescape",
        "groupby",
        "indent",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "replace",
        "reverse",
        "round",
        "select",
        "selectattr",
        "sort",
        "string",
        "striptags",
        "title",
        "tojson",
        "trim",
        "truncate",
        "unique",
        "upper",
        "urlencode",
        "wordcount",
        "wordwrap",
    }
)
_LOOP_FILTER: Final = "_clarion_loop"
_SIZED_FILTER: Final = "_clarion_sized"
_OUTPUT_FILTER: Final = "_clarion_output"


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=0,
        )
        self.filters = {name: FILTERS[name] for name in _SAFE_FILTERS}
        self.filters.update(
            {
                "center": _center,
                "indent": _indent,
                "join": _join,
                "replace": _replace,
                "wordwrap": _wordwrap,
                "tojson": _tojson,
                "trusted_html": _trusted_html if autoescape else _html_as_text,
                _LOOP_FILTER: _loop,
                _SIZED_FILTER: _sized,
                _OUTPUT_FILTER: _output,
            }
        )
        self.globals = {
            "range": _range,
            "dict": dict,
            "namespace": Namespace,
            "cycler": Cycler,
            "joiner": Joiner,
        }

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if attr.startswith("_"):
            return False
        if isinstance(obj, _JINJA_OBJECTS):
            return super().is_safe_attribute(obj, attr, value)
        if isinstance(obj, str):
            return attr in _STR_METHODS
        if isinstance(obj, Mapping):
            return attr in _MAPPING_METHODS
        if isinstance(obj, list | tuple):
            return attr in _SEQUENCE_METHODS
        return False

    def wrap_str_format(self, value: Any) -> None:
        # ``str.format`` is refused by `is_safe_attribute`; without this hook the sandbox would
        # hand out its own wrapper first, and format widths allocate without bound.
        return None

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        budget.step()
        budget.depth += 1
        try:
            if budget.depth > budget.limits.call_depth:
                raise _LimitExceeded(f"calls nest deeper than {budget.limits.call_depth}")
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        limits = budget.limits
        if operator == "%" and isinstance(left, str):
            raise SecurityError("printf-style % formatting is not available in templates")
        if (
            operator == "**"
            and _is_int(left)
            and _is_int(right)
            and right > 0
            and abs(left) > 1
            and abs(left).bit_length() * right > limits.int_bits
        ):
            raise _LimitExceeded(f"the power would exceed {limits.int_bits} bits")
        if operator == "*":
            if _is_int(left) and _is_int(right):
                if abs(left).bit_length() + abs(right).bit_length() > limits.int_bits:
                    raise _LimitExceeded(f"the product would exceed {limits.int_bits} bits")
            elif isinstance(left, str | list | tuple) and _is_int(right):
                budget.value(len(left) * max(right, 0))
                if not isinstance(left, str):
                    budget.value(_estimate(left, budget) * max(right, 0))
            elif isinstance(right, str | list | tuple) and _is_int(left):
                budget.value(len(right) * max(left, 0))
                if not isinstance(right, str):
                    budget.value(_estimate(right, budget) * max(left, 0))
        if (
            operator == "+"
            and isinstance(left, str | list | tuple)
            and isinstance(right, str | list | tuple)
        ):
            budget.value(len(left) + len(right))
            if not isinstance(left, str):
                budget.value(_estimate(left, budget) + _estimate(right, budget))
        return self.binop_table[operator](left, right)


def _estimate(value: Any, budget: _Budget) -> int:
    """The characters `value` would print as, counting shared references each time they
    appear; stops (refuses) as soon as that passes `Limits.value_chars`, so it costs at most
    that many visits however the value aliases itself (``[x, x]`` nested 60 deep)."""
    cap = budget.limits.value_chars
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, Mapping):
            total += 2
            for key, inner in item.items():
                pending.append(key)
                pending.append(inner)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2
            pending.extend(item)
        else:
            total += 8
        if total > cap:
            budget.value(total)
    return total


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _loop(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.step()
        yield item


def _sized(value: Any) -> Any:
    budget = _budget()
    if isinstance(value, str):
        budget.value(len(value))
    elif isinstance(value, Mapping | list | tuple):
        _estimate(value, budget)
    return value


def _output(value: Any) -> Any:
    budget = _budget()
    if isinstance(value, str):
        budget.value(len(value))
        budget.charge(len(value))
    elif isinstance(value, Mapping | list | tuple):
        budget.charge(_estimate(value, budget))
    return value


def _range(*args: int) -> range:
    numbers = range(*args)
    limit = _budget().limits.steps
    if len(numbers) > limit:
        raise _LimitExceeded(f"range() is limited to {limit} numbers")
    return numbers


def _check_width(width: Any, name: str, most: int) -> None:
    if isinstance(width, str):
        width = len(width)
    if not _is_int(width) or width > most:
        raise _LimitExceeded(f"{name} takes a width of at most {most}")


_SMALL: Final = 200
"""The largest width or separator the size-taking filters accept."""


def _center(value: str, width: int = 80) -> str:
    _check_width(width, "center", _budget().limits.value_chars)
    return str(value).center(width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> Any:
    _check_width(width, "indent", _SMALL)
    budget = _budget()
    size = len(s) + (str(s).count("\n") + 1) * (len(width) if isinstance(width, str) else width)
    budget.value(size)
    return FILTERS["indent"](s, width, first, blank)


@pass_eval_context
def _join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
    _check_width(d, "join's separator", _SMALL)
    items = list(value)
    budget = _budget()
    budget.value(len(items))
    budget.value(_estimate(items, budget) + len(d) * len(items))
    return FILTERS["join"](eval_ctx, items, d, attribute)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> Any:
    text, old, new = str(s), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and _is_int(count) and count >= 0:
        hits = min(hits, count)
    _budget().value(len(text) + hits * max(len(new) - len(old), 0))
    return FILTERS["replace"](eval_ctx, s, old, new, count)


@pass_eval_context
def _wordwrap(eval_ctx: EvalContext, s: str, width: int = 79, *args: Any, **kwargs: Any) -> Any:
    wrapstring = kwargs.get("wrapstring") or (args[1] if len(args) > 1 else None)
    if wrapstring is not None:
        _check_width(wrapstring, "wordwrap's wrapstring", 10)
    return FILTERS["wordwrap"](eval_ctx, s, width, *args, **kwargs)


@pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Any:
    if indent is not None:
        _check_width(indent, "tojson's indent", 8)
    _estimate(value, _budget())
    result = FILTERS["tojson"](eval_ctx, value, indent)
    _budget().value(len(result))
    return result


def _trusted_html(value: Any) -> Markup:
    """Event data that is HTML, sanitised by nh3's allowlist and then marked safe."""
    text = str(value)
    _budget().value(len(text))
    return Markup(nh3.clean(text))  # noqa: S704 - nh3 has just made it safe


def _html_as_text(value: Any) -> str:
    text = str(value)
    _budget().value(len(text))
    return Markup(nh3.clean(text)).striptags()  # noqa: S704 - tags are stripped


def _fence(tree: nodes.Template) -> nodes.Template:
    """Wrap loops, concatenations and every output in the budget-charging filters."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
    for concat in list(tree.find_all(nodes.Concat)):
        concat.nodes = [_wrap(n, _SIZED_FILTER) for n in concat.nodes]
    # A list, tuple or dict literal can repeat a reference (``[x, x]``), so each is sized.
    for literal in list(tree.find_all((nodes.List, nodes.Tuple, nodes.Dict))):
        if isinstance(literal, nodes.Tuple) and literal.ctx != "load":
            continue  # an assignment target (``for k, v in ...``), not a value
        for name, value in literal.iter_fields():
            if isinstance(value, list):
                setattr(
                    literal,
                    name,
                    [n if isinstance(n, nodes.Pair) else _wrap(n, _SIZED_FILTER) for n in value],
                )
        for pair in literal.find_all(nodes.Pair):
            pair.value = _wrap(pair.value, _SIZED_FILTER)
    for output in tree.find_all(nodes.Output):
        output.nodes = [
            _wrap(
                nodes.MarkSafeIfAutoescape(nodes.Const(n.data), lineno=n.lineno)
                if isinstance(n, nodes.TemplateData)
                else n,
                _OUTPUT_FILTER,
            )
            for n in output.nodes
        ]
    return tree


def _wrap(node: nodes.Expr, name: str) -> nodes.Expr:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


# --- rendering --------------------------------------------------------------------------------


class Part(StrEnum):
    """How a template part is rendered."""

    TEXT = "text"
    """Plain text: nothing escaped."""
    HTML = "html"
    """HTML: data escaped unless it goes through ``|trusted_html``."""
    LINE = "line"
    """One line (a subject, a push title): plain text with every run of whitespace made one
    space, at most `Limits.subject_chars` characters."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None = None


@dataclass
class Renderer:
    """Renders template sources with `Limits`. Compiled templates are cached by source.

    Attributes:
        limits: what one render may cost.
        timer: a monotonic clock in seconds, for the deadline.
        cache_size: how many compiled templates to keep.
    """

    limits: Limits = DEFAULT_LIMITS
    timer: Callable[[], float] = time.perf_counter
    cache_size: int = 512
    _html: _Sandbox = field(init=False, repr=False)
    _text: _Sandbox = field(init=False, repr=False)
    _cache: OrderedDict[tuple[bool, str], Any] = field(init=False, repr=False)
    _lock: Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._html = _Sandbox(autoescape=True)
        self._text = _Sandbox(autoescape=False)
        self._cache = OrderedDict()
        self._lock = Lock()

    def check(self, source: str, part: Part) -> None:
        """Compile `source` as `part`, to refuse a broken template when it is saved.

        Raises:
            errors.InvalidRequest: too long, or not valid Jinja (with the line).
        """
        self._compiled(source, part)

    def render(self, source: str, part: Part, variables: Mapping[str, Any]) -> str:
        """`source` rendered as `part` with `variables` (JSON-like values).

        Raises:
            errors.InvalidRequest: the template is invalid, uses an undefined value, reaches
                for something the sandbox refuses, or crosses a limit; the message says which.
        """
        template = self._compiled(source, part)
        budget = _Budget(self.limits, self.timer() + self.limits.seconds, self.timer)
        token = _BUDGET.set(budget)
        chunks: list[str] = []
        size = 0
        try:
            for chunk in template.generate(dict(variables)):
                size += len(chunk)
                if size > self.limits.output_chars:
                    raise _LimitExceeded(
                        f"the output is over {self.limits.output_chars} characters"
                    )
                chunks.append(chunk)
        except _LimitExceeded as exc:
            raise errors.InvalidRequest(f"template {part}: {exc}", part=str(part)) from None
        except SecurityError as exc:
            raise errors.InvalidRequest(
                f"template {part}: not allowed: {exc}", part=str(part)
            ) from None
        except TemplateError as exc:
            raise errors.InvalidRequest(
                f"template {part}: {exc.message or type(exc).__name__}", part=str(part)
            ) from None
        except RecursionError:
            raise errors.InvalidRequest(
                f"template {part}: recursion too deep", part=str(part)
            ) from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise errors.InvalidRequest(
                f"template {part}: {type(exc).__name__}: {exc}", part=str(part)
            ) from None
        finally:
            _BUDGET.reset(token)
        text = "".join(chunks)
        if part is Part.LINE:
            text = " ".join(text.split())
            if len(text) > self.limits.subject_chars:
                raise errors.InvalidRequest(
                    f"template {part}: over {self.limits.subject_chars} characters",
                    part=str(part),
                )
        return text

    def render_email(self, template: EmailTemplate, variables: Mapping[str, Any]) -> RenderedEmail:
        """The subject (`Part.LINE`), text and HTML of `template`.

        Raises:
            errors.InvalidRequest: see `render`; an empty subject.
        """
        subject = self.render(template.subject, Part.LINE, variables)
        if not subject:
            raise errors.InvalidRequest("template line: the subject is empty", part="line")
        text = self.render(template.text, Part.TEXT, variables)
        html = None if template.html is None else self.render(template.html, Part.HTML, variables)
        return RenderedEmail(subject, text, html)

    def check_email(self, template: EmailTemplate) -> None:
        """`check` every part of `template`."""
        self.check(template.subject, Part.LINE)
        self.check(template.text, Part.TEXT)
        if template.html is not None:
            self.check(template.html, Part.HTML)

    def _compiled(self, source: str, part: Part) -> Any:
        if len(source) > self.limits.template_chars:
            raise errors.InvalidRequest(
                f"template {part}: over {self.limits.template_chars} characters",
                part=str(part),
            )
        html = part is Part.HTML
        key = (html, source)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        env = self._html if html else self._text
        try:
            template = env.from_string(_fence(env.parse(source)))
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f" (line {line})" if line else ""
            raise errors.InvalidRequest(
                f"template {part}: {exc.message or type(exc).__name__}{where}",
                part=str(part),
                line=line,
            ) from None
        with self._lock:
            self._cache[key] = template
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return template


def sanitize_html(html: str) -> str:
    """`html` through nh3's allowlist: what ``|trusted_html`` does, for callers outside a
    template."""
    return nh3.clean(html)


__all__: Sequence[str] = (
    "DEFAULT_LIMITS",
    "EmailTemplate",
    "Limits",
    "Part",
    "RenderedEmail",
    "Renderer",
    "Subject",
    "TemplateKey",
    "choose_template",
    "locale_candidates",
    "normalize_locale",
    "sanitize_html",
)
