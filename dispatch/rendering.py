"""Per-recipient content rendering: sandboxed Jinja2, compiled once per campaign.

Templates come from the campaign (trusted to be templates); recipient and campaign
``vars`` are only ever *data* in the context, never compiled (DESIGN §3, PITFALLS).
HTML and AMP autoescape; subject and text do not (they are not HTML), and the subject
is refused if it renders with a line break.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import (
    Environment,
    Template,
    TemplateError,
    meta,
    nodes,
)
from jinja2.exceptions import TemplateSyntaxError
from markupsafe import escape

from dispatch.template_sandbox import (
    BUILT,
    DEADLINE,
    HTML_ENV,
    TEXT_ENV,
    bounded_output,
    start_deadline,
)
from dispatch.text_part import derive_text_template, html_to_text, tidy_derived
from providers.base import ALL_CONTENT_PARTS

log = logging.getLogger(__name__)


# Both environments have the same (default) globals: range, dict, lipsum, cycler, ...
_GLOBALS: dict[str, Any] = dict(HTML_ENV.globals)
ALL_PARTS = ALL_CONTENT_PARTS

# Names the service puts in every template's context itself; the links only come from a
# provider with a preference center (without one, vars of these names are used as given).
LINK_NAMES = frozenset({"unsubscribe_url", "preferences_url"})
SERVICE_NAMES = LINK_NAMES | {"email", "user_id", "campaign"}


class RenderError(ValueError):
    """A template cannot be compiled or rendered; the message names the part."""


@dataclass(slots=True)  # made per recipient: not frozen (4x cheaper); treat as read-only
class RenderedContent:
    subject: str
    html: str
    text: str
    amp: str


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
        elif isinstance(node, nodes.CondExpr) and node.test is not None:
            # The inline form, ``{{ x if x is defined else 'friend' }}``: as an ``if``.
            inner = guarded or guards(node.test)
            for child in node.iter_child_nodes():
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
    when autoescaping, as Jinja2 does; a null as nothing, as the sandbox prints it), a
    missing name is an error as StrictUndefined makes it. No attribute access or call is
    possible, so nothing needs the sandbox.
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
                value = "" if value is None else escape(value) if self.escape_values else str(value)
            elif self.escape_values and _HTML_SPECIAL.search(value):
                value = escape(value)  # most values have nothing to escape: skip the Markup
            out.append(value)
        return "".join(out)


def _generated(
    templates: Mapping[str, _PlainTemplate],
    strip_text: bool,
    general: Callable[[Mapping[str, Any]], RenderedContent],
) -> Callable[[Mapping[str, Any]], RenderedContent]:
    """``general`` (a plain renderer, see :meth:`CompiledContent._plain_renderer`) as one
    generated function: each name looked up once, each part one f-string (about half
    the time a message). Anything unusual (a missing name, a value whose ``str`` or
    escape raises) is handed to ``general``, which raises the error it always did.
    Names appear in the source only as ``repr``; the templates' text is passed in."""
    namespace: dict[str, Any] = {
        "general": general,
        "escape": escape,
        "special": _HTML_SPECIAL.search,
        "tidy": tidy_derived,
        "Rendered": RenderedContent,
        "RenderError": RenderError,
    }
    names: dict[str, int] = {}
    texts: dict[str, int] = {}  # each distinct text piece, as a global T<n>
    lookups: list[str] = []
    converted: dict[tuple[int, bool], str] = {}
    conversions: list[str] = []
    built: dict[str, str] = {}
    for part in ("subject", "html", "text", "amp"):
        template = templates.get(part)
        if template is None:
            built[part] = '""'
            continue
        fields = []
        for is_name, text in template.pieces:
            if not is_name:
                if text not in texts:
                    texts[text] = len(texts)
                    namespace[f"T{texts[text]}"] = text
                fields.append(f"{{T{texts[text]}}}")
                continue
            if text not in names:
                names[text] = len(names)
                lookups.append(f"        v{names[text]} = context[{text!r}]")
            n, escaped = names[text], template.escape_values
            if (n, escaped) not in converted:  # (as _PlainTemplate.render converts)
                var = converted[n, escaped] = f"{'e' if escaped else 's'}{n}"
                if escaped:
                    conversions.append(
                        f"        {var} = (escape(v{n}) if special(v{n}) else v{n}) "
                        f"if type(v{n}) is str else '' if v{n} is None else escape(v{n})"
                    )
                else:
                    conversions.append(
                        f"        {var} = v{n} if type(v{n}) is str "
                        f"else '' if v{n} is None else str(v{n})"
                    )
            fields.append(f"{{{converted[n, escaped]}}}")
        built[part] = f'f"{"".join(fields)}"' if fields else '""'
    text = f"tidy({built['text']})" if strip_text and "text" in templates else built["text"]
    source = "\n".join(
        [
            "def render(context):",
            "    try:",
            *(lookups + conversions or ["        pass"]),
            "    except Exception:",
            "        return general(context)  # (raises the error, naming the part)",
            f"    s = {built['subject']}.strip()",
            '    if "\\r" in s or "\\n" in s:',
            '        raise RenderError("subject: contains a line break after rendering")',
            f"    return Rendered(s, {built['html']}, {text}, {built['amp']})",
            "",
        ]
    )
    exec(compile(source, "<plain templates>", "exec"), namespace)
    render: Callable[[Mapping[str, Any]], RenderedContent] = namespace["render"]
    return render


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
            ("subject", subject, TEXT_ENV),
            ("html", html, HTML_ENV),
            ("text", text, TEXT_ENV),
            ("amp", amp, HTML_ENV),
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
            except SyntaxError as exc:
                # Jinja2 makes Python of it, and CPython refuses Python nested past its
                # limits (200 chained ``+``, 100 nested ``if``, 20 nested ``for``): its
                # line and text are of that Python, not of the template (a 500 in the API)
                raise RenderError(
                    f"{name}: template does not compile: expressions or tags nested too "
                    f"deeply ({exc.msg})"
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
                        TEXT_ENV.parse(derived), escape_values=False
                    ) or TEXT_ENV.from_string(derived)
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
            return RenderedContent(s, h, tidy_derived(t) if strip_text else t, a)

        return _generated({name: t for name, t, _ in plan}, strip_text, render)

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
        deadline = start_deadline()  # (for the message: all its parts)
        try:
            for name, template, plain in plan:
                out[name] = _render_part(name, template, plain, context)
        finally:
            DEADLINE.reset(deadline)
        derive = self._derive_text and "text" in parts
        subject = out["subject"].strip()
        if "\r" in subject or "\n" in subject:
            raise RenderError("subject: contains a line break after rendering")
        if derive:
            text = html_to_text(out["html"])
        elif self._text_is_derived:
            text = tidy_derived(out["text"])
        else:
            text = out["text"]
        return RenderedContent(subject=subject, html=out["html"], text=text, amp=out["amp"])


def _render_part(name: str, template: Any, plain: bool, context: Mapping[str, Any]) -> str:
    """One part of :meth:`CompiledContent.render`, within its own budget of characters
    built. Raises :class:`RenderError` naming the part."""
    budget = BUILT.set([0])
    try:
        if plain:
            text: str = template.render(context)
            return text
        return bounded_output(template.root_render_func(template.new_context(context, True)))
    except RenderError as exc:
        raise RenderError(f"{name}: {exc}") from exc
    except Exception as exc:  # sandbox violations, undefined names, filter errors
        where = _line_of(exc, template)
        raise RenderError(f"{name}: {where}{type(exc).__name__}: {exc}") from exc
    finally:
        BUILT.reset(budget)


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
    """One recipient's context: the campaign's, overridden by the recipient's, then ours.

    ``email``, ``user_id`` and ``campaign`` (the id) fill only what no var gives: DESIGN §3
    puts the vars in the context, and a campaign var ``campaign`` ("Black Friday") was
    replaced by the id in every message. Empty links (a provider without a preference
    center makes none) leave a var of that name as it is too: a sender with an
    unsubscribe page of its own gives its link there (with no such var the name is
    empty: DESIGN §3 keeps it in every context); a center's signed links win.
    """
    context = {**base, **user_vars}
    context.setdefault("email", email)
    context.setdefault("user_id", user_id)
    context.setdefault("campaign", campaign_id)
    for name, link in (("unsubscribe_url", unsubscribe_url), ("preferences_url", preferences_url)):
        if link:
            context[name] = link
        else:
            context.setdefault(name, "")
    return context


def build_context(
    *, campaign_vars: Mapping[str, Any], user_vars: Mapping[str, Any], **service: str
) -> dict[str, Any]:
    """The template context of one recipient (see :meth:`CompiledContent.render`).

    ``service``: the keyword arguments of :func:`recipient_context`.
    """
    return recipient_context(campaign_context(campaign_vars), user_vars, **service)
