"""The ``$$`` placeholder engine: compile a JSON template once, render it per message fast.

Grammar (DESIGN §3): ``$$`` followed by ``[A-Za-z_][A-Za-z0-9_]*``, case-sensitive; the
regular expression is greedy, so the longest name wins (``$$ToName`` is ``ToName``, never
``To`` followed by ``Name``). ``$$`` not followed by a name character stays literal.

Substitution walks the parsed JSON value, never its text, so any value (quotes, newlines,
``"}, {"x": 1``) yields valid JSON once serialised, and inserted values are data: they are
never scanned again (a recipient var holding ``$$To`` is sent as the four characters).

Rules for string leaves:

* a leaf that is exactly one placeholder (``"$$age"``) takes the value as it is: a custom
  var that is a number, bool, null, list or object keeps its JSON type; system
  placeholders are always strings;
* a placeholder inside longer text is interpolated as text: strings as they are, ``null``
  as the empty string, other values as their JSON text (``true``, ``20``, ``[1,2]``);
* object keys are literal: placeholders in keys are not substituted (a key is structure,
  and two keys rendering to one name would silently drop data); validation warns.

Resolution of a name, message scope: a system placeholder from :class:`OutgoingMessage`;
otherwise the recipient's ``user_vars`` first, then the campaign's ``campaign_vars`` (the
recipient's own value overrides the campaign default). Campaign scope (batch globals and
batch headers, rendered once per request): the campaign-level system placeholders and
``campaign_vars`` only. A name that resolves in neither raises
:class:`UnresolvedPlaceholderError`: a literal ``$$Name`` is never sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import attrgetter
from typing import Any, Final

import orjson

from providers.base import OutgoingMessage
from providers.errors import InvalidMessageError

PLACEHOLDER_RE: Final = re.compile(r"\$\$([A-Za-z_][A-Za-z0-9_]*)")


def _joined(name: str) -> Callable[[OutgoingMessage], str]:
    getter = attrgetter(name)

    def get(msg: OutgoingMessage) -> str:
        return ",".join(getter(msg))

    return get


def _link(name: str, attribute: str) -> Callable[[OutgoingMessage], str]:
    """The recipient's link. A provider with no preference center gives none: one saved
    when the name was a custom placeholder (refused on save since) meant the recipient's
    or the campaign's var of that name, which fills it as it did (README: Upgrading)."""
    getter = attrgetter(attribute)

    def get(msg: OutgoingMessage) -> str:
        link: str = getter(msg)
        if link:
            return link
        for values in (msg.user_vars, msg.campaign_vars):
            if name in values:
                return text_of(values[name])
        raise UnresolvedPlaceholderError([name])

    return get


# Where each system placeholder's value comes from (seed 002, "System Dynamic Replacements").
SYSTEM_PLACEHOLDERS: Final[Mapping[str, Callable[[OutgoingMessage], str]]] = {
    "To": attrgetter("to"),
    "Subject": attrgetter("subject"),
    "FromName": attrgetter("from_name"),
    "FromAddress": attrgetter("from_address"),
    "HTML": attrgetter("html"),
    "MessageID": attrgetter("meta"),
    "cc": _joined("cc"),
    "bcc": _joined("bcc"),
    "ReplyToAddress": attrgetter("reply_to"),
    "Plaintext": attrgetter("text"),
    "AMPHTML": attrgetter("amp"),
    "CampaignID": attrgetter("campaign_id"),
    # Not in the seed: the recipient's own links, so that an HTTP payload can carry
    # List-Unsubscribe (RFC 8058) as DESIGN §6 asks of every message.
    "UnsubscribeURL": _link("UnsubscribeURL", "unsubscribe_url"),
    "PreferencesURL": _link("PreferencesURL", "preferences_url"),
}

# System placeholders whose value is the same for every message of a campaign: the sender,
# reply-to, cc/bcc (campaign fields overriding provider defaults) and the campaign id. The
# subject and the contents are Jinja2 templates rendered per recipient, so they are not.
CAMPAIGN_LEVEL_SYSTEM: Final = frozenset(
    {"CampaignID", "FromName", "FromAddress", "ReplyToAddress", "cc", "bcc"}
)
PER_MESSAGE_SYSTEM: Final = frozenset(SYSTEM_PLACEHOLDERS) - CAMPAIGN_LEVEL_SYSTEM
LINK_PLACEHOLDERS: Final = frozenset({"UnsubscribeURL", "PreferencesURL"})  # (see _link)
CONTENT_PLACEHOLDERS: Final = frozenset({"HTML", "AMPHTML", "Plaintext"})

# The key under which a slot (the rendered message array of a batch body) is passed to
# ``Template.render``; it can never be a placeholder name.
SLOT: Final = "$slot"

Path = tuple[str | int, ...]
Renderer = Callable[[Mapping[str, Any]], Any]


class Scope(StrEnum):
    """Where values come from: one recipient's message, or the campaign as a whole."""

    MESSAGE = "message"
    CAMPAIGN = "campaign"


class UnresolvedPlaceholderError(InvalidMessageError):
    """One or more placeholders have no value for this message."""

    def __init__(self, names: Sequence[str], scope: Scope = Scope.MESSAGE) -> None:
        listed = ", ".join(f"$${n}" for n in names)
        where = "this recipient" if scope is Scope.MESSAGE else "the campaign (campaign level)"
        super().__init__(f"no value for {listed} for {where}")
        self.names = tuple(names)


def find_names(text: str) -> list[str]:
    """The placeholder names in ``text``, in order, repeats kept."""
    return PLACEHOLDER_RE.findall(text)


def is_custom(name: str) -> bool:
    """True for a name that is not a system placeholder."""
    return name not in SYSTEM_PLACEHOLDERS


def text_of(value: Any) -> str:
    """How a value reads when interpolated into text (see the module docstring)."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def walk_strings(value: Any, path: Path = ()) -> Iterator[tuple[Path, str, bool]]:
    """Yield ``(path, text, is_key)`` for every string leaf and object key of a JSON value."""
    if isinstance(value, str):
        yield path, value, False
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), key, True
            yield from walk_strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk_strings(item, (*path, index))


def names_in(value: Any, *, skip: Path | None = None) -> frozenset[str]:
    """Placeholder names in the string leaves of ``value`` (keys excluded).

    With ``skip``, the subtree at that path is left out (the message array of a batch).
    """
    found: set[str] = set()
    for path, text, is_key in walk_strings(value):
        if is_key or (skip is not None and path[: len(skip)] == skip):
            continue
        found.update(find_names(text))
    return frozenset(found)


def value_at(value: Any, path: Path) -> Any:
    """The subtree of ``value`` at ``path``; raises ``KeyError``/``IndexError`` if absent."""
    for step in path:
        value = value[step]
    return value


# --- compiling ---------------------------------------------------------------------------


def _compile_text(text: str, *, as_text: bool = False) -> tuple[Renderer | None, str]:
    """A renderer for one string leaf, or ``None`` when it holds no placeholder.

    A leaf that is exactly one placeholder renders to the value itself, unless ``as_text``.
    """
    pieces = PLACEHOLDER_RE.split(text)  # literal, name, literal, name, ..., literal
    if len(pieces) == 1:
        return None, text
    if len(pieces) == 3 and pieces[0] == "" and pieces[2] == "":
        name = pieces[1]
        if as_text:
            return (lambda values: text_of(values[name])), text
        return (lambda values: values[name]), text
    head = pieces[0]
    pairs = tuple(zip(pieces[1::2], pieces[2::2], strict=True))

    def interpolate(values: Mapping[str, Any]) -> str:
        out = [head]
        for name, literal in pairs:
            out.append(text_of(values[name]))
            out.append(literal)
        return "".join(out)

    return interpolate, text


def _compile_node(value: Any, path: Path, slot: Path | None) -> tuple[Renderer | None, Any]:
    """Return ``(renderer, constant)``: a renderer, or ``None`` and the constant value."""
    if slot is not None and path == slot:
        return (lambda values: values[SLOT]), None
    if isinstance(value, str):
        return _compile_text(value)
    if isinstance(value, dict):
        base: dict[str, Any] = {}
        dynamic: list[tuple[str, Renderer]] = []
        for key, item in value.items():
            render, constant = _compile_node(item, (*path, key), slot)
            base[key] = constant
            if render is not None:
                dynamic.append((key, render))
        if not dynamic:
            return None, base
        fields = tuple(dynamic)

        # Copy the constant skeleton (keys already in order) and fill the dynamic keys.
        def render_object(values: Mapping[str, Any]) -> dict[str, Any]:
            out = base.copy()
            for key, render in fields:
                out[key] = render(values)
            return out

        return render_object, base
    if isinstance(value, list):
        items: list[Any] = []
        slots: list[tuple[int, Renderer]] = []
        for index, item in enumerate(value):
            render, constant = _compile_node(item, (*path, index), slot)
            items.append(constant)
            if render is not None:
                slots.append((index, render))
        if not slots:
            return None, items
        positions = tuple(slots)

        def render_array(values: Mapping[str, Any]) -> list[Any]:
            out = items.copy()
            for index, render in positions:
                out[index] = render(values)
            return out

        return render_array, items
    if value is None or isinstance(value, bool | int | float):
        return None, value
    raise TypeError(f"not a JSON value at {_show_path(path)}: {type(value).__name__}")


def _show_path(path: Path) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path) or "."


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled JSON template; :meth:`render` fills it from a mapping of values.

    Constant subtrees are shared between renders (never mutate a rendered value).
    """

    names: frozenset[str]
    _render: Renderer | None
    _constant: Any

    def render(self, values: Mapping[str, Any]) -> Any:
        """Fill the template; ``values`` must hold every name in :attr:`names`.

        Raises ``KeyError`` for a missing name (use a :class:`Resolver` to build values).
        """
        if self._render is None:
            return self._constant
        return self._render(values)


def compile_template(value: Any, *, slot: Path | None = None) -> Template:
    """Compile a parsed JSON value; ``slot`` marks a subtree rendered as ``values[SLOT]``.

    Raises ``TypeError`` when ``value`` is not made of JSON types.
    """
    # Own a private copy: the caller's structure may be mutated later, ours is shared.
    owned = orjson.loads(orjson.dumps(value))
    render, constant = _compile_node(owned, (), slot)
    return Template(names_in(owned, skip=slot), render, constant)


@dataclass(frozen=True, slots=True)
class TextTemplate:
    """A compiled string template (a header value, a query value); renders to ``str``."""

    source: str
    names: frozenset[str]
    _render: Renderer | None

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the text; a lone placeholder is interpolated as text too.

        Raises ``KeyError`` for a missing name.
        """
        if self._render is None:
            return self.source
        result: str = self._render(values)
        return result


def compile_text(text: str) -> TextTemplate:
    """Compile a string template."""
    render, _ = _compile_text(text, as_text=True)
    return TextTemplate(text, frozenset(find_names(text)), render)


# --- resolving ---------------------------------------------------------------------------


class Resolver:
    """Builds the values for a fixed set of names from one message, in one scope.

    Built once per template set; :meth:`values` is the per-message hot path.
    """

    __slots__ = ("_custom", "_scope", "_system", "names")

    def __init__(self, names: Iterable[str], scope: Scope = Scope.MESSAGE) -> None:
        """Raises ``ValueError`` for a per-message system placeholder in campaign scope."""
        self.names = frozenset(names)
        self._scope = scope
        system = sorted(n for n in self.names if not is_custom(n))
        if scope is Scope.CAMPAIGN:
            wrong = [n for n in system if n not in CAMPAIGN_LEVEL_SYSTEM]
            if wrong:
                raise ValueError(
                    "per-message placeholders in a campaign-level place: "
                    + ", ".join(f"$${n}" for n in wrong)
                )
        self._system = tuple((n, SYSTEM_PLACEHOLDERS[n]) for n in system)
        self._custom = tuple(sorted(n for n in self.names if is_custom(n)))

    def values(self, msg: OutgoingMessage) -> dict[str, Any]:
        """The value of every name for ``msg``.

        Raises :class:`UnresolvedPlaceholderError` naming every name without a value.
        """
        values = {name: get(msg) for name, get in self._system}
        if self._custom:
            campaign = msg.campaign_vars
            user: Mapping[str, Any] = msg.user_vars if self._scope is Scope.MESSAGE else {}
            missing: list[str] = []
            for name in self._custom:
                if name in user:
                    values[name] = user[name]
                elif name in campaign:
                    values[name] = campaign[name]
                else:
                    missing.append(name)
            if missing:
                raise UnresolvedPlaceholderError(missing, self._scope)
        return values


class MessageRenderer:
    """Renders one message's JSON value straight from the message (the batch hot path).

    For the common shape, an object whose values are constants or exactly one
    placeholder each (``{"to": "$$To", "name": "$$name", "type": "email"}``), it builds a
    function that returns the object as one dict display, reading the message directly:
    four times faster than filling a copy from a mapping of values. The function's source
    holds only ``repr`` of the keys and of validated placeholder names, and the names of
    the message's attributes; constants are passed in, never written into the source.
    Anything else (and every error) goes through the general :class:`Template` and
    :class:`Resolver`, so both ways give the same result.
    """

    def __init__(self, source: Any) -> None:
        self.template = compile_template(source)
        self.resolver = Resolver(self.template.names, Scope.MESSAGE)
        self._direct: Callable[[OutgoingMessage], dict[str, Any]] | None = None
        owned = orjson.loads(orjson.dumps(source))
        if isinstance(owned, dict):
            self._direct = _direct_renderer(owned)

    def render(self, msg: OutgoingMessage) -> Any:
        """The message's value; raises :class:`UnresolvedPlaceholderError`."""
        if self._direct is None:
            return self.template.render(self.resolver.values(msg))
        try:
            return self._direct(msg)
        except KeyError:
            self.resolver.values(msg)  # raises, naming every missing name
            raise


def _direct_renderer(obj: dict[str, Any]) -> Callable[[OutgoingMessage], dict[str, Any]] | None:
    """The direct function for ``obj`` (see :class:`MessageRenderer`), or None."""
    namespace: dict[str, Any] = {}
    entries = []
    for index, (key, value) in enumerate(obj.items()):
        pieces = PLACEHOLDER_RE.split(value) if isinstance(value, str) else [value]
        if len(pieces) == 1 and not names_in(value):
            namespace[f"_k{index}"] = value  # a constant, passed in
            entries.append(f"{key!r}: _k{index}")
            continue
        if len(pieces) != 3 or pieces[0] or pieces[2]:
            return None  # text around a placeholder, or a nested placeholder
        name = pieces[1]
        if is_custom(name):
            entries.append(f"{key!r}: (u[{name!r}] if {name!r} in u else c[{name!r}])")
        elif name in _PLAIN_ATTRIBUTES:
            entries.append(f"{key!r}: m.{_PLAIN_ATTRIBUTES[name]}")
        elif name in LINK_PLACEHOLDERS:
            namespace[f"_g{index}"] = SYSTEM_PLACEHOLDERS[name]  # (see _link)
            entries.append(f"{key!r}: _g{index}(m)")
        else:
            return None  # cc/bcc are joined lists: the general way
    source = (
        "def render(m):\n"
        "    u = m.user_vars\n"
        "    c = m.campaign_vars\n"
        f"    return {{{', '.join(entries)}}}\n"
    )
    exec(compile(source, "<payload item>", "exec"), namespace)
    render: Callable[[OutgoingMessage], dict[str, Any]] = namespace["render"]
    return render


# System placeholders whose value is one attribute of the message, as it is.
_PLAIN_ATTRIBUTES: Final[Mapping[str, str]] = {
    "To": "to",
    "Subject": "subject",
    "FromName": "from_name",
    "FromAddress": "from_address",
    "HTML": "html",
    "MessageID": "meta",
    "ReplyToAddress": "reply_to",
    "Plaintext": "text",
    "AMPHTML": "amp",
    "CampaignID": "campaign_id",
}
