"""The Jinja2 sandbox templates render in, bounded: what one operation, filter or part may
build, and how many loop steps a part may take (the sandbox itself keeps templates from
Python's internals, not from exhausting memory or CPU); and the filters dispatch adds.
"""

from __future__ import annotations

import inspect
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from contextvars import ContextVar, Token
from datetime import UTC, date, datetime
from functools import lru_cache, update_wrapper
from itertools import islice
from typing import Any, cast

from jinja2 import (
    Environment,
    StrictUndefined,
    nodes,
    pass_environment,
)
from jinja2.compiler import CodeGenerator, Frame, operators, optimizeconst
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.filters import do_default, make_attrgetter, sync_do_sum
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace
from markupsafe import Markup, escape

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
# Seconds one message's render may take, all its parts together. The limits above bound
# each operation and the number of steps, not the work each step does: a loop of 100,000
# steps sorting a list of 100,000 items each time (``{{ items|sort|first }}``, the list
# made in the template or taken from vars) ran for hours. Checked after every filter,
# call and operation and at every loop step and macro call; a legitimate render takes
# well under a millisecond, 100,000 loop steps under a second.
MAX_RENDER_SECONDS = 2.0
DEADLINE: ContextVar[float] = ContextVar("dispatch_render_deadline", default=float("inf"))
_clock = time.monotonic  # (wall time: 60 ns a reading, where CPU time takes 700)
# Jinja2 tokens (a tag's or an expression's delimiters, names, operators, a run of text)
# one template may hold. Jinja2 takes about 0.1 ms and 15 KB to parse and compile each
# expression: 100,000 ``{{ x|first }}`` (1.3 MB) took 42 s and 1.4 GB in the API, and a
# request may be 64 MB. A rich newsletter template holds a few thousand.
MAX_TEMPLATE_TOKENS = 20_000
_SIZED = (str, bytes, list, tuple)  # (bytes: ``'a'.encode() * n``)
BUILT: ContextVar[list[int] | None] = ContextVar("dispatch_built_chars", default=None)
# A printf-style conversion's flags, width and precision, read where its ``%`` (and
# mapping key) end; and the numbers of a {}-field's format spec (its width, precision).
_PRINTF_SPEC = re.compile(r"[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?")
_PARENS = re.compile(r"[()]")
_NUMBER = re.compile(r"\d+")
# Calls whose integer arguments are sizes of the result (str methods, lipsum's counts).
_SIZE_TAKING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
# str and bytes methods whose result may repeat an argument (see _check_join).
_GROWING_METHODS = frozenset({"replace", "join", "translate"})
# Characters textwrap may copy breaking a text's long words (see _check_wordwrap): a
# 1,000,000-character word at the default width (79) is about 1.3e10, a third of a second.
MAX_WRAP_WORK = 20_000_000_000
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
    When it could, the lines are counted first (wrapped with one character).

    Also refused: words so long for the width that breaking them would take seconds.
    ``textwrap`` breaks a long word a line at a time, copying the rest of the word each
    time: time in the square of its length over the width, in one call no time limit
    can cut (``('a' * 999999)|wordwrap(1)`` took 20 to 40 s; in the API too, three times,
    when the text is a constant the template compiles)."""
    wrapstring, text, width = args["wrapstring"], args["s"], args["width"]
    if (
        isinstance(text, str)
        and args["break_long_words"]
        and type(width) is int
        and width > 0
        and len(text) ** 2 // width > MAX_WRAP_WORK  # (cheap first: no word is longer)
        and len(text) * max(map(len, text.split()), default=0) // width > MAX_WRAP_WORK
    ):
        raise _refuse("a wordwrap of words this long")
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
    built = BUILT.get()
    if built is not None:
        built[0] += chars
        if built[0] > MAX_BUILT_CHARS:
            raise _refuse(f"building over {MAX_BUILT_CHARS:,} characters in one part")


def start_deadline() -> Token[float]:
    """Start the clock of one message's render (:data:`MAX_RENDER_SECONDS`); the token
    resets it (``DEADLINE.reset``)."""
    return DEADLINE.set(_clock() + MAX_RENDER_SECONDS)


def _out_of_time() -> SecurityError:
    return SecurityError(
        f"rendering took over {MAX_RENDER_SECONDS:g} s, the template limit (a filter over "
        "a long list in a loop?)"
    )


def check_template_size(source: str) -> None:
    """Refuse a template too large to compile in bounded time and memory: more than
    :data:`MAX_TEMPLATE_TOKENS` Jinja2 tokens, or more text than a part may render
    (:data:`MAX_PART_CHARS`: every message would fail). Raises ``ValueError`` saying
    which; a template Jinja2 cannot read passes (compiling it says why)."""
    if len(source) > MAX_PART_CHARS:
        raise ValueError(
            f"the template is {len(source):,} characters, more than a part may render "
            f"({MAX_PART_CHARS:,})"
        )
    try:
        beyond = next(islice(HTML_ENV.lex(source), MAX_TEMPLATE_TOKENS, None), None)
    except TemplateSyntaxError:
        return
    if beyond is not None:
        raise ValueError(
            f"the template holds more than {MAX_TEMPLATE_TOKENS:,} Jinja2 tokens (tags, "
            "names, operators, runs of text): use a loop or a macro for repeated content"
        )


def _check_size(value: Any, what: str) -> Any:
    if _clock() > DEADLINE.get():  # (after every filter, call and operation)
        raise _out_of_time()
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


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja2's ``default`` filter, standing in for a null too (see :func:`_checked_output`):
    ``{{ first_name | default('there') }}`` is for a first name nobody gave, and a var
    given as ``null`` is one."""
    return default_value if value is None else do_default(value, default_value, boolean)


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


class _End:
    """Where the walk of :func:`_text_size` leaves a container: its text's size is known."""

    __slots__ = ("key", "start")

    def __init__(self, key: int, start: int) -> None:
        self.key, self.start = key, start


def _text_size(value: Any, limit: int) -> int:
    """About ``len(str(value))``, counted only up to just past ``limit``.

    A list holding one long string a thousand times costs a thousand pointers, but its
    text (what output, ``~``, ``format``, ``join`` or ``tojson`` make of it) is a thousand
    times the string: that is what must be bounded before Python builds it. So is a
    container held many times (``[m] * 1000``, ``m`` a list holding a list a thousand
    times: five gigabytes of text in a few kilobytes): its text is counted each time,
    from its size noted the first time; only a container within itself (a namespace
    may hold itself) is shown once, as ``str`` shows it (``[...]``).
    """
    size = 0
    stack = [value]
    sizes: dict[int, int] = {}  # by id: each container's text, or 5 while within it
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif type(item) is int:
            size += item.bit_length() // 3 + 2
        elif isinstance(item, _CONTAINERS):  # not Jinja2's Context: a filter's argument
            known = sizes.get(id(item))
            if known is not None:
                size += known
                continue
            sizes[id(item)] = 5
            stack.append(_End(id(item), size))
            if isinstance(item, Namespace):
                item = item._Namespace__attrs
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
            size += 2 + 2 * len(item)
        elif type(item) is _End:
            sizes[item.key] = size - item.start
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
    a macro or a ``{% set %}`` block keeps what its loop prints until it ends.

    A null (JSON's: a var given as ``null``, as exports write a field left empty) prints
    as nothing, as ``$$`` placeholders fill it: Python's ``None`` is no text of a message
    ("Hi None,")."""
    if type(value) is str:
        _spend(len(value))
    elif value is None:
        return ""
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


def bounded_output(chunks: Iterable[str]) -> str:
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
        return bounded_output(buffer)
    size = sum(map(len, buffer))
    if size > MAX_PART_CHARS:
        raise _refuse(f"a block of over {MAX_PART_CHARS} characters")
    _spend(size)
    return _concat(buffer)


def _compared(value: Any) -> Any:
    """An operand of a comparison (``==``, ``in``, ``<``, a test such as ``eq``) or a key
    hashed (``d[key]``, ``{key: ...}``), refused when its text would pass
    :data:`MAX_PART_CHARS`: Python compares containers and hashes tuples item by item
    in one call no limit can stop, and a list doubled in a loop (``[l, l]``, 40 times)
    holds 2**40 items in 40 lists (comparing two such lists took hours)."""
    if type(value) not in _FLAT and _text_size(value, MAX_PART_CHARS) > MAX_PART_CHARS:
        raise _refuse("comparing or hashing a value whose text")
    return value


# Python's comparison of each of Jinja2's comparison operators (as Operand nodes name them).
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": lambda left, right: left in right,
    "notin": lambda left, right: left not in right,
}


def _compare(left: Any, op: str, right: Any) -> Any:
    """``left op right``, its operands checked first (:func:`_compared`) unless one of them
    is flat: a number or text is compared with any value in a step, and looked for in a
    container a step an item (``p.sku in bought``: walking a list of 200 addresses, or
    SKUs, at every comparison made a product loop's message six times slower)."""
    if type(left) not in _FLAT and type(right) not in _FLAT:
        _compared(left)
        _compared(right)
    return _COMPARISONS[op](left, right)


# Jinja2's tests that compare their value with their argument (as _compared says).
_COMPARING_TESTS = frozenset(
    {"in", "==", "eq", "equalto", "!=", "ne", ">", "gt", "greaterthan", ">=", "ge"}
    | {"<", "lt", "lessthan", "<=", "le"}
)


def _bounded_test(test: Callable[..., Any]) -> Callable[..., Any]:
    """A comparing test with its value and argument checked first (:func:`_compared`)."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        given = (*args, *kwargs.values())
        if all(type(arg) not in _FLAT for arg in given):  # (as _compare says)
            for arg in given:
                _compared(arg)
        return test(*args, **kwargs)

    return update_wrapper(bounded, test)


def _count_step(context: Context) -> None:
    """One loop iteration or macro call of the part ``context`` renders."""
    steps: int = context.__dict__.get("dispatch_steps", 0) + 1
    if steps > MAX_STEPS:
        raise _refuse(f"over {MAX_STEPS:,} loop iterations and macro calls")
    if _clock() > DEADLINE.get():
        raise _out_of_time()
    context.dispatch_steps = steps  # type: ignore[attr-defined]


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a size-checked join (Jinja2 cannot intercept ``~``), checks
    what is compared or hashed (:func:`_compared`), and counts each iteration of a loop
    and each call of a macro or call block."""

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

    # Each operand of a comparison, a non-constant subscript or dict key, checked first:
    # a comparison with one operator through environment.compare (see _compare).
    @optimizeconst
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        if len(node.ops) == 1:
            self.write("environment.compare(")
            self.visit(node.expr, frame)
            self.write(f", {node.ops[0].op!r}, ")
            self.visit(node.ops[0].expr, frame)
            self.write(")")
            return
        self.write("(")
        self._visit_compared(node.expr, frame)
        for op in node.ops:
            self.visit(op, frame)
        self.write(")")

    def visit_Operand(self, node: nodes.Operand, frame: Frame) -> None:
        self.write(f" {operators[node.op]} ")
        self._visit_compared(node.expr, frame)

    @optimizeconst
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.getitem(")
        self.visit(node.node, frame)
        self.write(", ")
        self._visit_compared(node.arg, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("{")
        for item in node.items:
            self._visit_compared(item.key, frame)
            self.write(": ")
            self.visit(item.value, frame)
            self.write(", ")
        self.write("}")

    def _visit_compared(self, node: nodes.Expr, frame: Frame) -> None:
        if isinstance(node, nodes.Const):
            self.visit(node, frame)
            return
        self.write("environment.compared(")
        self.visit(node, frame)
        self.write(")")

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
        self.compared = _compared
        self.compare = _compare
        self.filters["sum"] = _linear_sum
        self.filters["date"] = _date
        self.filters["default"] = self.filters["d"] = _default
        for name, filter_ in self.filters.items():
            self.filters[name] = _bounded_filter(name, filter_)
        self.filters["format"] = _fast_format(self.filters["format"].__wrapped__)
        for name in _COMPARING_TESTS:  # (mypy types Jinja2's tests "function")
            self.tests[name] = _bounded_test(cast(Callable[..., Any], self.tests[name]))

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute``; of a dict (vars are JSON objects) its key of that name
        first, as Django's templates read it: Jinja2 prefers the attribute, so a var's
        ``order.items`` was the dict's method (printed as ``<built-in method items of
        dict object at 0x...>`` in every message, or not iterable in a loop), as were
        ``values``, ``keys``, ``get``, ``pop``, ``update`` and the rest."""
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

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
        elif (
            name in ("count", "index")
            and isinstance(text, list | tuple)
            and (not args or type(args[0]) not in _FLAT)  # (as _compare says)
        ):
            _compared(text)  # (each item compared with the argument)
        result = super().call(__context, __obj, *args, **kwargs)
        return _check_size(result, f"the result of {name or 'a call'}")


HTML_ENV = BoundedSandbox(autoescape=True, undefined=StrictUndefined)
TEXT_ENV = BoundedSandbox(autoescape=False, undefined=StrictUndefined)
