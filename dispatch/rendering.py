"""Per-recipient content rendering: sandboxed Jinja2, compiled once per campaign.

Templates come from the campaign (trusted to be templates); recipient and campaign
``vars`` are only ever *data* in the context, never compiled (DESIGN §3, PITFALLS).
HTML and AMP autoescape; subject and text do not (they are not HTML), and the subject
is refused if it renders with a line break.
"""

from __future__ import annotations

import difflib
import html as html_lib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache, update_wrapper
from itertools import islice
from typing import Any

from jinja2 import (
    Environment,
    StrictUndefined,
    Template,
    TemplateError,
    meta,
    nodes,
    pass_environment,
)
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.filters import make_attrgetter, sync_do_sum
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace
from markupsafe import Markup, escape

from providers.base import ALL_CONTENT_PARTS

log = logging.getLogger(__name__)

# The sandbox keeps templates from Python's internals, not from exhausting memory or CPU:
# ``{{ 'a' * 10**9 }}`` is folded to a constant while the template compiles (in the API),
# ``{{ name.ljust(10**9) }}`` makes a gigabyte per recipient (in the worker). These bound
# what one operation may build and what one part may render to; past them the template
# fails with a RenderError like any other, and at campaign creation never with a 500.
MAX_VALUE_SIZE = 1_000_000  # characters or items one operator, call or filter may make
MAX_INT_BITS = 10_000  # integers beyond (3,000 digits) are no content
MAX_PART_CHARS = 20_000_000  # of one rendered part: far beyond what any provider accepts
# Loop iterations and macro calls in one rendered part: nested loops multiply, and a macro
# that calls itself twice doubles at each level, so neither size above bounds the CPU a
# template may take (``range`` within ``range`` printing nothing ran for hours).
MAX_STEPS = 100_000
# Characters one part may build in all (every operation's new text counted): bounds the
# memory of text that is built and kept, e.g. in a list or a block, before it is output.
MAX_BUILT_CHARS = 2 * MAX_PART_CHARS
_SIZED = (str, bytes, list, tuple)  # (bytes: ``'a'.encode() * n``)
_built: ContextVar[list[int] | None] = ContextVar("dispatch_built_chars", default=None)
# A printf-style conversion's flags, width and precision, read where its ``%`` (and
# mapping key) end; and the numbers of a {}-field's format spec (its width, precision).
_PRINTF_SPEC = re.compile(r"[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_PARENS = re.compile(r"[()]")
_NUMBER = re.compile(r"\d+")
# Calls whose integer arguments are sizes of the result (str methods, lipsum's counts).
_SIZE_TAKING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
# str and bytes methods whose result may repeat an argument (see _check_join).
_GROWING_METHODS = frozenset({"replace", "join", "translate"})
_MAX_LIPSUM = 1_000  # paragraphs or words per paragraph: each is hundreds of characters
# Filters whose integer arguments are sizes: of the result, or of how many lists it holds.
_SIZE_FILTERS = ("center", "indent", "wordwrap", "batch", "slice")
_OUTPUT_BATCH = 64  # rendered chunks taken at a time (each at most MAX_VALUE_SIZE)
_FLAT = frozenset({str, int, float, bool, type(None)})  # whose text is their own size
_concat = "".join
# What str() shows the items of (dict views: ``obj.items()``).
_CONTAINERS = (
    dict,
    list,
    tuple,
    set,
    frozenset,
    Namespace,
    *map(type, ({}.keys(), {}.values(), {}.items())),
)


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} would exceed the template limits")


def _check_sizes(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str, limit: int = MAX_VALUE_SIZE
) -> None:
    for arg in (*args, *kwargs.values()):
        if type(arg) is int and abs(arg) > limit:
            raise _refuse(f"{what}({arg})")


@lru_cache(maxsize=1024)
def _printf_padding(fmt: str) -> int:
    """The characters a printf-style ``fmt``'s widths and precisions may add (its
    ``*``s count as one each: :func:`_check_format` adds their arguments).

    Read left to right as Python reads it, a ``%(key)`` to its matching parenthesis, so
    linear in ``fmt`` (a regular expression of it backtracked: quadratic on ``{:::``).
    Format strings are mostly the template's own constants: read once each.
    """
    padding = 0
    at = fmt.find("%")
    while at >= 0:
        at += 1
        if fmt.startswith("(", at):
            depth = 0
            for paren in _PARENS.finditer(fmt, at):
                depth += 1 if paren[0] == "(" else -1
                if not depth:
                    at = paren.end()
                    break
            else:
                return padding  # an unclosed key: Python refuses the format
        spec = _PRINTF_SPEC.match(fmt, at)
        assert spec is not None  # (every part is optional)
        for number in spec.groups():
            if number:
                padding += 1 if number == "*" else int(number) if len(number) < 10 else 10**9
        at = fmt.find("%", spec.end() + 1)  # past the conversion character
    return padding


def _check_format(fmt: Any, args: tuple[Any, ...]) -> None:
    """Refuse a printf-style format whose widths and precisions (a ``*`` one given as an
    argument) would make text past :data:`MAX_VALUE_SIZE`, before Python makes it: many
    fields of a large width are as large as one huge one."""
    if isinstance(fmt, str):
        padding = _printf_padding(fmt) if len(fmt) <= 200 else _printf_padding.__wrapped__(fmt)
        if "*" in fmt:
            _check_sizes(args, {}, "a * width")
            padding += sum(abs(a) for a in args if type(a) is int)
        if padding > MAX_VALUE_SIZE:
            raise _refuse("a format width")


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` in the sandbox, refused before a field's width or precision (its
    format spec once nested fields fill it) or all fields' text together would make
    more than :data:`MAX_VALUE_SIZE` characters."""

    _made = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._made = 0
        return super().vformat(format_string, args, kwargs)

    def format_field(self, value: Any, format_spec: str) -> Any:
        numbers = _NUMBER.findall(format_spec)
        if any(len(n) > 6 for n in numbers) or sum(map(int, numbers)) > MAX_VALUE_SIZE:
            raise _refuse("a format width")
        text = super().format_field(value, format_spec)
        self._made += len(text)
        if self._made > MAX_VALUE_SIZE:
            raise _refuse("a format's fields")
        return text


class _BoundedEscapeFormatter(_BoundedFormatter, SandboxedEscapeFormatter):
    """:class:`_BoundedFormatter` for a ``Markup`` format string (its fields escaped)."""


def _check_replace(text: str | bytes, old: Any, new: Any) -> None:
    if isinstance(text, bytes):
        if not isinstance(old, bytes) or not isinstance(new, bytes):
            return  # bytes.replace refuses them itself
    else:
        old, new = str(old), str(new)
    grows = max(len(new) - len(old), 0) * (text.count(old) if old else len(text) + 1)
    if len(text) + grows > MAX_VALUE_SIZE:
        raise _refuse("a replacement")


# Operations that repeat one of their arguments as often as another says, in one call
# Python makes whole: their result is checked after it is made, too late (a separator of
# 999,999 characters joining 3,000 items is 3 GB, and the OOM killer ends the worker).
# Each is refused before it runs when its result would pass MAX_VALUE_SIZE.


def _check_join(separator: Any, items: Any) -> Any:
    """Refuse ``separator.join(items)`` past the limit; return ``items``, made a list
    when it has no length (a generator: it is read once)."""
    if isinstance(separator, str | bytes) and len(separator) > 1:
        if not isinstance(items, Sized):
            items = list(items)
        if len(separator) * (len(items) - 1) > MAX_VALUE_SIZE:
            raise _refuse("a join")
    return items


def _check_indent(text: Any, width: Any) -> None:
    """Refuse the ``indent`` filter past the limit: its width repeats on every line."""
    size = len(width) if isinstance(width, str) else width if type(width) is int else 0
    # (cheap first: a text has at most one line more than it has characters)
    if (
        isinstance(text, str)
        and len(text) + size * (len(text) + 2) > MAX_VALUE_SIZE
        and len(text) + size * (len(text.splitlines()) + 2) > MAX_VALUE_SIZE
    ):
        raise _refuse("an indent")


def _check_wordwrap(wrap: Callable[..., str], args: dict[str, Any]) -> None:
    """Refuse the ``wordwrap`` filter past the limit: its ``wrapstring`` ends every line.
    When it could, the lines are counted first (wrapped with one character)."""
    wrapstring, text = args["wrapstring"], args["s"]
    if not isinstance(wrapstring, str) or not isinstance(text, str) or len(wrapstring) < 2:
        return
    if len(wrapstring) * (len(text) + 1) > MAX_VALUE_SIZE:
        wrapped = wrap(**{**args, "wrapstring": "\n"})
        if len(wrapped) + wrapped.count("\n") * (len(wrapstring) - 1) > MAX_VALUE_SIZE:
            raise _refuse("a wordwrap")


def _check_expandtabs(text: str | bytes, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``text.expandtabs(size)`` past the limit: each tab may become ``size``."""
    size = args[0] if args else kwargs.get("tabsize", 8)
    tabs = text.count("\t") if isinstance(text, str) else text.count(b"\t")
    if type(size) is int and len(text) + tabs * size > MAX_VALUE_SIZE:
        raise _refuse("an expandtabs")


def _check_translate(text: str, table: Any) -> None:
    """Refuse ``text.translate(table)`` past the limit: a character may become a string."""
    values = (
        table.values()
        if isinstance(table, dict)
        else table
        if isinstance(table, list | tuple)
        else ()
    )
    longest = max((len(v) for v in values if isinstance(v, str)), default=1)
    if longest > 1 and len(text) * longest > MAX_VALUE_SIZE:
        raise _refuse("a translation")


def _check_filter(
    name: str, filter_: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The checks of :data:`_GROWING_FILTERS`; returns the arguments to call with."""
    try:
        bound = inspect.signature(filter_).bind(*args, **kwargs)
    except TypeError:
        return args, kwargs  # the filter refuses them itself
    bound.apply_defaults()
    given = bound.arguments
    if name == "join":  # (items with __html__ have the separator escaped)
        escaped = given["eval_ctx"].autoescape
        separator = escape(given["d"]) if escaped else str(given["d"])
        given["value"] = _check_join(separator, given["value"])
    elif name == "indent":
        _check_indent(given["s"], given["width"])
    else:
        _check_wordwrap(filter_, dict(given))
    return bound.args, bound.kwargs


_GROWING_FILTERS = frozenset({"join", "indent", "wordwrap"})


def _spend(chars: int) -> None:
    """Count ``chars`` new characters against the part being rendered."""
    built = _built.get()
    if built is not None:
        built[0] += chars
        if built[0] > MAX_BUILT_CHARS:
            raise _refuse(f"building over {MAX_BUILT_CHARS:,} characters in one part")


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, _SIZED):
        if len(value) > MAX_VALUE_SIZE:
            raise _refuse(what)
        # Characters made, or items: a list grown by ``ns.l = ns.l + [i]`` in a loop is
        # copied whole at every step (99,999 steps took 20 s, within every other limit).
        _spend(len(value))
    return value


MAX_DATE_FORMAT = 200  # characters of a date filter's format


def _date(value: Any, fmt: str = "%Y-%m-%d") -> str:
    """The ``date`` filter: a time as text, ``fmt`` as ``strftime`` reads it (English
    names: ``{{ order.placed | date('%d %b %Y') }}`` is ``04 Nov 2026``).

    ``value`` is ISO 8601 text (vars are JSON, which has no dates: ``2026-11-04``,
    ``2026-11-04T10:03:39Z``), Unix seconds, or a date. A time with an offset is shown in
    that offset; the sandbox offers no other way to read a date. Raises ``ValueError``
    or ``TypeError`` naming what it got (that message fails, its detail saying so)."""
    if not isinstance(fmt, str) or len(fmt) > MAX_DATE_FORMAT:
        raise ValueError(f"date: the format must be text of at most {MAX_DATE_FORMAT} characters")
    when: date | datetime
    if isinstance(value, datetime | date):
        when = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            when = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"date: {value!r} is no Unix time") from exc
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"date: {value[:50]!r} is no ISO 8601 date or time") from None
    else:
        raise TypeError(f"date: expected ISO 8601 text or Unix seconds, got {type(value).__name__}")
    return when.strftime(fmt)


@pass_environment
def _linear_sum(
    environment: Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    """Jinja2's ``sum`` filter, with lists or tuples (``start=[]``) joined in linear time:
    Python's ``sum`` copies the whole result for every item (``sum(start=[])`` of 99,999
    one-item lists took 11 s)."""
    if not isinstance(start, list | tuple):
        return sync_do_sum(environment, iterable, attribute, start)
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    kind = type(start)
    out = list(start)
    for item in iterable:
        if type(item) is not kind:  # as ``sum`` (list + tuple is a TypeError)
            raise TypeError(
                f'can only concatenate {kind.__name__} (not "{type(item).__name__}") to '
                f"{kind.__name__}"
            )
        out.extend(item)
        if len(out) > MAX_VALUE_SIZE:
            raise _refuse("a sum")
    return out if kind is list else tuple(out)


def _text_size(value: Any, limit: int) -> int:
    """About ``len(str(value))``, counted only up to just past ``limit``.

    A list holding one long string a thousand times costs a thousand pointers, but its
    text (what output, ``~``, ``format``, ``join`` or ``tojson`` make of it) is a thousand
    times the string: that is what must be bounded before Python builds it.
    """
    size = 0
    stack = [value]
    seen: set[int] = set()
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif type(item) is int:
            size += item.bit_length() // 3 + 2
        elif isinstance(item, _CONTAINERS):  # not Jinja2's Context: a filter's argument
            if id(item) in seen:  # a namespace may hold itself
                continue
            seen.add(id(item))
            if isinstance(item, Namespace):
                item = item._Namespace__attrs
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
            size += 2 + 2 * len(item)
        else:
            size += 24  # numbers, None, a repr: a few characters
    return size


def _check_text(values: Iterable[Any], what: str, limit: int = MAX_PART_CHARS) -> None:
    """Refuse before ``values`` (containers among them) are made text past ``limit``."""
    for value in values:
        if type(value) not in _FLAT and _text_size(value, limit) > limit:
            raise _refuse(f"{what} of a value whose text")


def _checked_output(value: Any) -> Any:
    """Jinja2's ``finalize``: a ``{{ value }}`` whose text would be huge is refused
    before ``str`` makes it, and its text (a copy when escaped) counts as built: a block,
    a macro or a ``{% set %}`` block keeps what its loop prints until it ends."""
    if type(value) is str:
        _spend(len(value))
    elif type(value) not in _FLAT:
        size = _text_size(value, MAX_PART_CHARS)
        if size > MAX_PART_CHARS:
            raise _refuse("printing a value whose text")
        _spend(size)
    return value


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``left operator right`` before Python builds a huge result."""
    if operator == "%":
        _check_text((right,), "a % format", MAX_VALUE_SIZE)
    if type(left) is int and type(right) is int:
        bits = max(abs(left).bit_length(), 1)
        if operator == "**" and right > 0 and abs(left) > 1 and bits * right > MAX_INT_BITS:
            raise _refuse(f"{left} ** {right}")
        if operator == "*" and bits + abs(right).bit_length() > MAX_INT_BITS:
            raise _refuse("a product")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SIZED) and type(times) is int and len(seq) * times > MAX_VALUE_SIZE:
                raise _refuse("a repetition")
    elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
        if len(left) + len(right) > MAX_VALUE_SIZE:
            raise _refuse("a concatenation")
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,))


def _bounded_output(chunks: Iterable[str]) -> str:
    """A part's rendered chunks joined, refused past :data:`MAX_PART_CHARS` as they come
    (a loop can emit far more than any one operation makes)."""
    out: list[str] = []
    size = 0
    it = iter(chunks)
    while batch := list(islice(it, _OUTPUT_BATCH)):  # counted a batch at a time (in C)
        size += sum(map(len, batch))
        if size > MAX_PART_CHARS:
            raise _refuse(f"a rendered part of over {MAX_PART_CHARS} characters")
        out += batch
    joined: str = _concat(out)
    return joined


def _bounded_join(join: Callable[[Any], str], pieces: tuple[Any, ...]) -> str:
    """``join(pieces)`` of a ``~`` expression, refused past :data:`MAX_VALUE_SIZE` (the
    pieces' text is measured before it is made)."""
    _check_text(pieces, "a ~ concatenation", MAX_VALUE_SIZE)
    joined: str = _check_size(join(pieces), "a ~ concatenation")
    return joined


def _bounded_concat(buffer: Iterable[str]) -> str:
    """The text of a block, a macro's or a ``{% set %}`` block's body: refused past
    :data:`MAX_PART_CHARS` before it is joined (a loop can print one long string many
    times into it). ``Template.render`` hands a whole template's output as it comes."""
    if not isinstance(buffer, list):
        return _bounded_output(buffer)
    size = sum(map(len, buffer))
    if size > MAX_PART_CHARS:
        raise _refuse(f"a block of over {MAX_PART_CHARS} characters")
    _spend(size)
    return _concat(buffer)


def _count_step(context: Context) -> None:
    """One loop iteration or macro call of the part ``context`` renders."""
    steps: int = context.__dict__.get("dispatch_steps", 0) + 1
    if steps > MAX_STEPS:
        raise _refuse(f"over {MAX_STEPS:,} loop iterations and macro calls")
    context.dispatch_steps = steps  # type: ignore[attr-defined]


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a size-checked join (Jinja2 cannot intercept ``~``), and
    counts each iteration of a loop and each call of a macro or call block."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # Jinja2's own, with the join and its pieces handed to bounded_join.
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.bounded_join({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    # Jinja2 refuses new node types: the count is written at the start of the next block
    # these write, which is the body (the loop's ``else`` and filter come after it).
    _count_next_block = False

    def blockvisit(self, nodes: Iterable[nodes.Node], frame: Frame) -> None:
        if self._count_next_block:
            self._count_next_block = False
            self.writeline("environment.count_step(context)")
        super().blockvisit(nodes, frame)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._count_next_block = True
        super().visit_For(node, frame)

    def macro_body(self, node: nodes.Macro | nodes.CallBlock, frame: Frame) -> Any:
        self._count_next_block = True
        return super().macro_body(node, frame)


def _bounded_filter(name: str, filter_: Callable[..., Any]) -> Callable[..., Any]:
    """``filter_`` with its arguments checked first and its result after."""

    # The environment or context Jinja2 passes first to some filters is not the value.
    first = 1 if getattr(filter_, "jinja_pass_arg", None) is not None else 0
    grows = name in _GROWING_FILTERS

    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_text((*args, *kwargs.values()), f"the filter {name}")
        value, rest = args[first], args[first + 1 :]
        if name in _SIZE_FILTERS:
            _check_sizes(rest, kwargs, name)
        elif name == "format":
            _check_format(str(value), rest)
        elif name == "replace" and len(rest) >= 2:
            _check_replace(str(value), rest[0], rest[1])
        if grows:
            args, kwargs = _check_filter(name, filter_, args, kwargs)
        return _check_size(filter_(*args, **kwargs), f"the filter {name}")

    bounded.__dict__.update(getattr(filter_, "__dict__", {}))  # keeps Jinja2's pass_* markers
    bounded.__wrapped__ = filter_  # type: ignore[attr-defined]
    return bounded


def _fast_format(filter_: Callable[..., Any]) -> Callable[..., Any]:
    """The ``format`` filter: a format string once found safe (no huge width, no ``*``:
    its result is then as bounded as its arguments) goes straight through; the per-call
    checks cost more than the formatting (0.8 µs a call against 0.4)."""
    checked = _bounded_filter("format", filter_)
    safe: set[str] = set()

    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if value.__class__ is str and value in safe:
            _check_text((*args, *kwargs.values()), "the filter format", MAX_VALUE_SIZE)
            return _check_size(filter_(value, *args, **kwargs), "the filter format")
        result = checked(value, *args, **kwargs)
        if value.__class__ is str and "*" not in value and len(safe) < 1024:
            safe.add(value)
        return result

    bounded.__dict__.update(filter_.__dict__)
    return bounded


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with the size limits above on operators, calls, filters and ``~``."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_checked_output, **options)
        self.bounded_join = _bounded_join
        self.concat = _bounded_concat  # type: ignore[method-assign]
        self.count_step = _count_step
        self.filters["sum"] = _linear_sum
        self.filters["date"] = _date
        for name, filter_ in self.filters.items():
            self.filters[name] = _bounded_filter(name, filter_)
        self.filters["format"] = _fast_format(self.filters["format"].__wrapped__)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right), "an operation")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja2's sandboxed ``str.format`` / ``format_map``, with the formatter of
        :class:`_BoundedFormatter` (Jinja2's wrapper, which makes its own, otherwise)."""
        if super().wrap_str_format(value) is None:
            return None
        text: str = value.__self__
        formatter = (
            _BoundedEscapeFormatter(self, escape=text.escape)
            if isinstance(text, Markup)
            else _BoundedFormatter(self)
        )
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return type(text)(formatter.vformat(text, (), args[0]))
            return type(text)(formatter.vformat(text, args, kwargs))

        return update_wrapper(wrapper, value)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(__obj, "__name__", "")
        _check_text((*args, *kwargs.values()), f"a call of {name or 'a function'}")
        if name in _SIZE_TAKING:
            _check_sizes(args, kwargs, name)
        elif name == "generate_lorem_ipsum":
            _check_sizes(args, kwargs, "lipsum", _MAX_LIPSUM)
        # str methods are bound to their text (format: checked by _BoundedFormatter)
        text = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(text, str | bytes) and name in _GROWING_METHODS and args:
            if name == "replace" and len(args) >= 2:
                _check_replace(text, args[0], args[1])
            elif name == "join":
                args = (_check_join(text, args[0]), *args[1:])
            elif name == "translate" and isinstance(text, str):
                _check_translate(text, args[0])
        if name == "expandtabs" and isinstance(text, str | bytes):
            _check_expandtabs(text, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return _check_size(result, f"the result of {name or 'a call'}")


_HTML_ENV = BoundedSandbox(autoescape=True, undefined=StrictUndefined)
_TEXT_ENV = BoundedSandbox(autoescape=False, undefined=StrictUndefined)
# Both environments have the same (default) globals: range, dict, lipsum, cycler, ...
_GLOBALS: dict[str, Any] = dict(_HTML_ENV.globals)
ALL_PARTS = ALL_CONTENT_PARTS

# Names the service puts in every template's context itself.
SERVICE_NAMES = frozenset({"unsubscribe_url", "preferences_url", "email", "user_id", "campaign"})


class RenderError(ValueError):
    """A template cannot be compiled or rendered; the message names the part."""


@dataclass(slots=True)  # made per recipient: not frozen (4x cheaper); treat as read-only
class RenderedContent:
    subject: str
    html: str
    text: str
    amp: str


_BLOCK_TAGS = re.compile(
    r"<\s*(br|/p|/div|/h[1-6]|/li|/tr|/table|/ul|/ol|hr)\b[^>]*>", re.IGNORECASE
)
_ITEM_TAGS = re.compile(r"<\s*li\b[^>]*>", re.IGNORECASE)  # a list item: "- item"
_CELL_TAGS = re.compile(r"<\s*/t[dh]\b[^>]*>", re.IGNORECASE)  # a row's cells apart
_LINK_OPENING = re.compile(r"<a\b([^>]*)>", re.IGNORECASE)
_LINK_CLOSING = re.compile(r"</a\s*>", re.IGNORECASE)
_HREF = re.compile(r"""(?:^|\s)href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_DROPPED = ("script", "style", "head")  # elements dropped with their content
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n+")


def _drop_elements(html: str) -> str:
    r"""``html`` without its script, style and head elements (content included).

    Each opening tag's end tag is searched for once: ``<(script|...)\b.*?</\1\s*>`` tried
    that search again from every opening tag, so text of many unclosed ones took time in
    the square of its length (and held the GIL: a campaign's HTML froze the API).
    """
    names = list(_DROPPED)
    out: list[str] = []
    at = 0
    while names:
        opening = re.compile(rf"<({'|'.join(names)})\b", re.IGNORECASE).search(html, at)
        if opening is None:
            break
        name = opening[1].lower()
        closing = re.compile(rf"</{name}\s*>", re.IGNORECASE).search(html, opening.end())
        if closing is None:  # nor for any later opening tag of this name: kept as text
            names.remove(name)
            continue
        out.append(html[at : opening.start()])
        at = closing.end()
    out.append(html[at:])
    return "".join(out)


def _sub_tags(pattern: re.Pattern[str], replacement: str, text: str) -> str:
    """``pattern.sub`` for a tag pattern (it ends at the next ``>``), past the last ``>``
    left alone: no tag can start there, and the pattern would look for its ``>`` from
    every ``<`` there to the end (time in the square of the text's length)."""
    end = text.rfind(">") + 1
    return pattern.sub(replacement, text[:end]) + text[end:]


def _plain(html: str) -> str:
    """The text of an HTML fragment on one line (tags dropped, entities read)."""
    return " ".join(html_lib.unescape(_sub_tags(_TAGS, "", html)).split())


def _show_links(html: str) -> str:
    """``html`` with each link's address written after its text, ``text (address)``: a
    plain-text reader must see where a link goes (the unsubscribe link above all). Not
    for an anchor within the page, a script, or a link whose text is its address."""
    out: list[str] = []
    at = 0
    for opening in _LINK_OPENING.finditer(html, 0, html.rfind(">") + 1):
        if opening.start() < at:
            continue  # within the text of the link before (a link in a link)
        href = _HREF.search(opening[1])
        if href is None:
            continue
        closing = _LINK_CLOSING.search(html, opening.end())
        if closing is None:
            break  # nor for any later link
        address = next(g for g in href.groups() if g is not None).strip()
        label = html[opening.end() : closing.start()]
        out.append(html[at : closing.start()])
        plain = html_lib.unescape(address)
        if not (
            not plain
            or plain.startswith("#")
            or plain.lower().startswith("javascript:")
            or _plain(label) in (plain, plain.removeprefix("mailto:"))
        ):
            out.append(f" ({address})")
        at = closing.start()
    out.append(html[at:])
    return "".join(out)


def html_to_text(html: str) -> str:
    """A plain-text alternative derived from HTML: block tags become line breaks, list
    items lines of their own (``- item``), links ``text (address)``.

    Linear in the length of ``html`` (it may be a campaign's whole template).
    """
    text = _show_links(_drop_elements(html))
    text = _sub_tags(_BLOCK_TAGS, "\n", text)
    text = _sub_tags(_ITEM_TAGS, "- ", text)
    text = _sub_tags(_CELL_TAGS, " ", text)
    text = html_lib.unescape(_sub_tags(_TAGS, "", text))
    text = _SPACES.sub(" ", text)
    return _BLANKS.sub("\n\n", "\n".join(line.strip() for line in text.split("\n"))).strip()


def _tidy_derived(text: str) -> str:
    """A rendered derived text template as :func:`html_to_text` ends: blank lines where
    a loop's text meets the template's (``</li>`` then ``</ul>``) made one."""
    if text.count("\n") < 2:  # (no blank line to merge: most messages' text, per message)
        return text.strip()
    return _BLANKS.sub("\n\n", text).strip()


_MARKER = re.compile("\x00(\\d+)\x00")
_NEEDS_HTML_RENDERING = {"raw_begin"}


def derive_text_template(html: str) -> str | None:
    """A plain-text *template* derived once from an HTML template, or None if unsafe.

    Converting every rendered HTML body to text costs about 60 µs a message; converting
    the template once gives the same text for the static parts and keeps the Jinja2
    expressions, so the text part renders like any template. Expressions inside HTML
    tags (attributes) are dropped with their tag. Templates this cannot mirror exactly
    (raw blocks, ``|safe`` output, autoescape switches, whitespace control) return None
    and the text is derived from each rendered HTML body instead.
    """
    try:
        tokens = list(_HTML_ENV.lex(html))
    except TemplateError:
        return None
    if "".join(value for _, _, value in tokens) != html:
        return None  # whitespace control changed the source: do not guess
    pieces: list[str] = []
    segments: list[str] = []
    blocks: set[int] = set()
    # An expression written twice is one marker: a link whose text is its address
    # (``<a href="{{ url }}">{{ url }}</a>``) is seen so here as in the rendered HTML.
    expressions: dict[str, int] = {}
    current: list[str] = []
    is_block = False

    def close_segment() -> None:
        source = "".join(current)
        if is_block:
            blocks.add(len(segments))
            index = len(segments)
        else:
            index = expressions.setdefault(source, len(segments))
        if index == len(segments):
            segments.append(source)
        pieces.append(f"\x00{index}\x00")
        current.clear()

    for _, kind, value in tokens:
        if kind in _NEEDS_HTML_RENDERING or (kind == "name" and value in ("safe", "autoescape")):
            return None
        if kind == "data":
            if current:
                close_segment()
                is_block = False
            pieces.append(value)
            continue
        is_block = is_block or kind in ("block_begin", "comment_begin")
        current.append(value)
    if current:
        close_segment()
    text = html_to_text("".join(pieces))
    survivors = {int(m) for m in _MARKER.findall(text)}
    if not blocks <= survivors:
        return None  # a block tag sat inside an HTML tag: its structure would be lost
    out = []
    for i, piece in enumerate(_MARKER.split(text)):  # static text, segment, static, ...
        if i % 2:
            out.append(segments[int(piece)])
        elif "{" in piece:  # unescaped entities (&#123;) must stay text, not become Jinja
            if "endraw" in piece:
                return None
            out.append("{% raw %}" + piece + "{% endraw %}")
        else:
            out.append(piece)
    return "".join(out)


_GUARDS = {"default", "d"}  # filters that stand in for a missing value
_DEFINED_TESTS = {"defined", "undefined"}


def _required_names(ast: nodes.Template) -> set[str]:
    """The names a template reads that it cannot render without (StrictUndefined): all
    but those it only reads through ``default``, in a ``defined``/``undefined`` test, or
    under an ``if`` whose test holds one of those (then it is the author's logic)."""
    needed: set[str] = set()

    def guards(test: nodes.Node) -> bool:
        found = [test, *test.find_all((nodes.Filter, nodes.Test))]  # (find_all: below it)
        return any(
            (isinstance(n, nodes.Filter) and n.name in _GUARDS)
            or (isinstance(n, nodes.Test) and n.name in _DEFINED_TESTS)
            for n in found
        )

    def visit(node: nodes.Node, guarded: bool) -> None:
        if isinstance(node, nodes.Filter) and node.name in _GUARDS:
            if isinstance(node.node, nodes.Name):  # the name itself may be missing
                for child in node.iter_child_nodes(exclude=("node",)):
                    visit(child, guarded)
                return
        elif isinstance(node, nodes.Test) and node.name in _DEFINED_TESTS:
            if isinstance(node.node, nodes.Name):
                return
        elif isinstance(node, nodes.If):
            inner = guarded or guards(node.test)  # (``x is defined and x``: both guarded)
            visit(node.test, inner)
            for child in (*node.body, *node.elif_, *node.else_):
                visit(child, inner)
            return
        elif isinstance(node, nodes.Name) and node.ctx == "load" and not guarded:
            needed.add(node.name)
        for child in node.iter_child_nodes():
            visit(child, guarded)

    visit(ast, False)
    return needed


_HTML_SPECIAL = re.compile(r"[&<>'\"]")  # what markupsafe.escape replaces


class _PlainTemplate:
    """A template that is only text and ``{{ name }}`` lookups, rendered without Jinja2.

    Most campaign templates are like this; Jinja2 spends most of a render on building
    its context. The result is the same: values through ``str`` (escaped with markupsafe
    when autoescaping, as Jinja2 does), a missing name is an error as StrictUndefined
    makes it. No attribute access or call is possible, so nothing needs the sandbox.
    """

    def __init__(self, pieces: list[tuple[bool, str]], escape_values: bool) -> None:
        self.pieces = pieces  # (is_name, text or name)
        self.escape_values = escape_values

    @classmethod
    def compile(cls, ast: nodes.Template, escape_values: bool) -> _PlainTemplate | None:
        pieces: list[tuple[bool, str]] = []
        for node in ast.body:
            if not isinstance(node, nodes.Output):
                return None
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    pieces.append((False, child.data))
                elif isinstance(child, nodes.Name) and child.ctx == "load":
                    pieces.append((True, child.name))
                else:
                    return None
        return cls(pieces, escape_values)

    def render(self, variables: Mapping[str, Any]) -> str:
        out = []
        for is_name, text in self.pieces:
            if not is_name:
                out.append(text)
                continue
            try:
                value = variables[text]
            except KeyError:
                raise RenderError(f"UndefinedError: '{text}' is undefined") from None
            if type(value) is not str:
                value = escape(value) if self.escape_values else str(value)
            elif self.escape_values and _HTML_SPECIAL.search(value):
                value = escape(value)  # most values have nothing to escape: skip the Markup
            out.append(value)
        return "".join(out)


# Tags that read another template by name: a campaign's templates are four strings with
# no template store behind them (every message would fail: "no loader").
_LOADING_TAGS: dict[type[nodes.Node], str] = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}

_CHECKED_NODES: tuple[type[nodes.Node], ...] = (*_LOADING_TAGS, nodes.Filter, nodes.Test)


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """``no filter named 'uper' (did you mean 'upper'?)``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"no {kind} named {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _check_supported(ast: nodes.Template, env: Environment) -> None:
    """Refuse what compiles but could render for no recipient: a tag that loads another
    template, a filter or test that does not exist. Jinja2 refuses an unknown filter
    when it compiles, but not within a condition (``{% if x is strng %}``, ``{{ x|uper
    if y }}``): that fails at render time, so every message of the campaign would."""
    for node in ast.find_all(_CHECKED_NODES):
        if isinstance(node, nodes.Filter):
            if node.name not in env.filters:
                raise TemplateSyntaxError(_unknown("filter", node.name, env.filters), node.lineno)
        elif isinstance(node, nodes.Test):
            if node.name not in env.tests:
                raise TemplateSyntaxError(_unknown("test", node.name, env.tests), node.lineno)
        else:
            tag = _LOADING_TAGS[type(node)]
            raise TemplateSyntaxError(
                f"{{% {tag} %}} is not supported: a campaign's templates cannot read other "
                "templates (define a macro in this one instead)",
                node.lineno,
            )


def _compile_problem(exc: TemplateError) -> str:
    """A compile error as a person reads it: its line and Jinja2's message (str() of a
    parse error names no line, and a filter's names Jinja2's internal file)."""
    line = getattr(exc, "lineno", None)
    message = exc.message or type(exc).__name__
    return f"line {line}: {message}" if line else message


class CompiledContent:
    """The four templates of one campaign, compiled once; ``render`` per recipient."""

    def __init__(self, *, subject: str, html: str, text: str = "", amp: str = "") -> None:
        self._parts: dict[str, Any] = {}
        self.variables: set[str] = set()  # every name the templates read from outside
        self.required: set[str] = set()  # those without which they cannot render
        self.used_at: dict[str, str] = {}  # each required name's first use: "html line 3"
        for name, source, env in (
            ("subject", subject, _TEXT_ENV),
            ("html", html, _HTML_ENV),
            ("text", text, _TEXT_ENV),
            ("amp", amp, _HTML_ENV),
        ):
            if not source:
                self._parts[name] = None
                continue
            try:
                ast = env.parse(source)
                _check_supported(ast, env)
                undeclared = meta.find_undeclared_variables(ast)
                self.variables |= undeclared
                required = _required_names(ast) & undeclared
                self.required |= required
                for node in ast.find_all(nodes.Name):
                    if node.name in required and node.name not in self.used_at:
                        self.used_at[node.name] = f"{name} line {node.lineno}"
                self._parts[name] = _PlainTemplate.compile(
                    ast, escape_values=env.autoescape is True
                ) or env.from_string(source)
            except TemplateError as exc:
                raise RenderError(
                    f"{name}: template does not compile: {_compile_problem(exc)}"
                ) from exc
            except (ValueError, ArithmeticError, MemoryError, RecursionError) as exc:
                # constant folding (``{{ 10**5000 }}`` has no decimal text), deep nesting
                raise RenderError(
                    f"{name}: template does not compile: {type(exc).__name__}: {exc}"
                ) from exc
        self._plans: dict[frozenset[str], list[tuple[str, Any, bool]]] = {}
        self._fast: dict[frozenset[str], Callable[[Mapping[str, Any]], RenderedContent] | None] = {}

        self._derive_text = False
        self._text_is_derived = False
        if not text and html:
            derived = derive_text_template(html)
            try:
                if derived is not None:
                    self._parts["text"] = _PlainTemplate.compile(
                        _TEXT_ENV.parse(derived), escape_values=False
                    ) or _TEXT_ENV.from_string(derived)
                    self._text_is_derived = True
            except TemplateError:  # (derive_text_template guards against it; never a 500)
                log.exception("derived text template does not compile: %r", derived)
            self._derive_text = not self._text_is_derived

        # When every template is plain text-and-names, a recipient whose own vars hold
        # every name they use (none of them the service's) renders from those vars as
        # they are: the names resolve the same, without building the merged context.
        plain = all(t is None or isinstance(t, _PlainTemplate) for t in self._parts.values())
        self.recipient_names: frozenset[str] | None = (
            frozenset(self.variables) if plain and not self.variables & SERVICE_NAMES else None
        )

    def _plain_renderer(
        self, parts: frozenset[str]
    ) -> Callable[[Mapping[str, Any]], RenderedContent] | None:
        """:meth:`render` for ``parts`` when each of their templates is plain (and no text
        is derived from each rendered HTML): the same results and errors, without the
        general path's bookkeeping (about half of a render's time); None otherwise."""
        plan = self._plan(parts)
        if not all(plain for _, _, plain in plan) or (self._derive_text and "text" in parts):
            return None
        by_name = {name: template.render for name, template, _ in plan}
        subject, html, text, amp = (by_name.get(n) for n in ("subject", "html", "text", "amp"))
        strip_text = self._text_is_derived

        def render(context: Mapping[str, Any]) -> RenderedContent:
            part = "subject"
            try:
                s = subject(context).strip() if subject else ""
                part = "html"
                h = html(context) if html else ""
                part = "text"
                t = text(context) if text else ""
                part = "amp"
                a = amp(context) if amp else ""
            except RenderError as exc:
                raise RenderError(f"{part}: {exc}") from exc
            except Exception as exc:
                raise RenderError(f"{part}: {type(exc).__name__}: {exc}") from exc
            if "\r" in s or "\n" in s:
                raise RenderError("subject: contains a line break after rendering")
            return RenderedContent(s, h, _tidy_derived(t) if strip_text else t, a)

        return render

    def _plan(self, parts: frozenset[str]) -> list[tuple[str, Any, bool]]:
        """The templates to run for ``parts``: ``(name, template, is_plain)``."""
        derive = self._derive_text and "text" in parts
        return [
            (name, template, isinstance(template, _PlainTemplate))
            for name, template in self._parts.items()
            if template is not None and (name in parts or (derive and name == "html"))
        ]

    def render(
        self, context: Mapping[str, Any], parts: frozenset[str] = ALL_PARTS
    ) -> RenderedContent:
        """Render the ``parts`` a provider uses for one recipient (the others stay empty).

        Raises :class:`RenderError` naming the part.
        """
        try:
            fast = self._fast[parts]
        except KeyError:
            fast = self._fast[parts] = self._plain_renderer(parts)
        if fast is not None:
            return fast(context)
        # ``context`` holds the globals too (build_context puts them first) and is handed
        # to each template as is (``shared``): Template.render would copy it and chain the
        # globals for every part.
        out = {"subject": "", "html": "", "text": "", "amp": ""}
        plan = self._plans.get(parts)
        if plan is None:
            plan = self._plans[parts] = self._plan(parts)
        for name, template, plain in plan:
            budget = _built.set([0])
            try:
                if plain:
                    out[name] = template.render(context)
                else:
                    out[name] = _bounded_output(
                        template.root_render_func(template.new_context(context, True))
                    )
            except RenderError as exc:
                raise RenderError(f"{name}: {exc}") from exc
            except Exception as exc:  # sandbox violations, undefined names, filter errors
                where = _line_of(exc, template)
                raise RenderError(f"{name}: {where}{type(exc).__name__}: {exc}") from exc
            finally:
                _built.reset(budget)
        derive = self._derive_text and "text" in parts
        subject = out["subject"].strip()
        if "\r" in subject or "\n" in subject:
            raise RenderError("subject: contains a line break after rendering")
        if derive:
            text = html_to_text(out["html"])
        elif self._text_is_derived:
            text = _tidy_derived(out["text"])
        else:
            text = out["text"]
        return RenderedContent(subject=subject, html=out["html"], text=text, amp=out["amp"])


def _line_of(exc: BaseException, template: Template) -> str:
    """``line N: ``, the line of ``template`` where ``exc`` was raised (its innermost
    frame of the template's code: within a macro, the macro's line), or ``""``."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__jinja_template__") is template:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return f"line {line}: " if line else ""


def campaign_context(campaign_vars: Mapping[str, Any]) -> dict[str, Any]:
    """The part of every recipient's context that the campaign fixes (globals first)."""
    return {**_GLOBALS, **campaign_vars}


def recipient_context(
    base: Mapping[str, Any],
    user_vars: Mapping[str, Any],
    *,
    email: str,
    user_id: str,
    campaign_id: str,
    unsubscribe_url: str = "",
    preferences_url: str = "",
) -> dict[str, Any]:
    """One recipient's context: the campaign's, overridden by the recipient's, then ours."""
    context = {**base, **user_vars}
    context["email"] = email
    context["user_id"] = user_id
    context["campaign"] = campaign_id
    context["unsubscribe_url"] = unsubscribe_url
    context["preferences_url"] = preferences_url
    return context


def build_context(
    *, campaign_vars: Mapping[str, Any], user_vars: Mapping[str, Any], **service: str
) -> dict[str, Any]:
    """The template context of one recipient (see :meth:`CompiledContent.render`).

    ``service``: the keyword arguments of :func:`recipient_context`.
    """
    return recipient_context(campaign_context(campaign_vars), user_vars, **service)
