"""Rendering is safe by construction: sandboxed, autoescaped, recipient data never code."""

from __future__ import annotations

import contextlib

import pytest

from dispatch import template_sandbox
from dispatch.campaign_checks import validate_content
from dispatch.campaigns import CampaignError
from dispatch.models import CampaignRequest
from dispatch.rendering import CompiledContent, RenderError, build_context
from dispatch.template_sandbox import MAX_STEPS
from dispatch.text_part import derive_text_template, html_to_text


def _render(template: str, **vars: object) -> str:
    compiled = CompiledContent(subject="s", html=template)
    ctx = build_context(
        campaign_vars={}, user_vars=vars, email="a@b.example", user_id="u", campaign_id="c"
    )
    return compiled.render(ctx).html


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ [].append.__self__ }}",
        "{% set x = [] %}{{ x.append(1) }}",  # immutable sandbox: no mutation of lists
        "{{ ''.format.__globals__ }}",
    ],
)
def test_sandbox_escapes_are_refused(attack: str) -> None:
    with pytest.raises(RenderError) as info:
        _render(attack)
    assert "html" in str(info.value)


def test_recipient_vars_with_template_syntax_stay_text() -> None:
    out = _render("<p>Hi {{ name }}</p>", name="{{ 7*7 }} {% if 1 %}x{% endif %}")
    assert out == "<p>Hi {{ 7*7 }} {% if 1 %}x{% endif %}</p>"


def test_html_is_autoescaped_but_subject_and_text_are_not() -> None:
    compiled = CompiledContent(subject="{{ deal }}", html="<b>{{ deal }}</b>", text="{{ deal }}")
    ctx = build_context(
        campaign_vars={"deal": "Fish & <Chips>"},
        user_vars={},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    out = compiled.render(ctx)
    assert out.html == "<b>Fish &amp; &lt;Chips&gt;</b>"
    assert out.subject == "Fish & <Chips>"
    assert out.text == "Fish & <Chips>"


def test_recipient_vars_override_campaign_vars() -> None:
    compiled = CompiledContent(subject="{{ a }}-{{ b }}", html="x")
    ctx = build_context(
        campaign_vars={"a": 1, "b": 2},
        user_vars={"b": 3},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    assert compiled.render(ctx).subject == "1-3"


def test_undefined_variable_is_an_error_not_blank() -> None:
    with pytest.raises(RenderError, match="missing"):
        _render("{{ missing }}")


def test_subject_with_line_break_is_refused() -> None:
    compiled = CompiledContent(subject="Hi {{ name }}", html="x")
    ctx = build_context(
        campaign_vars={},
        user_vars={"name": "Eve\r\nBcc: x@y.example"},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    with pytest.raises(RenderError, match="line break"):
        compiled.render(ctx)


def test_broken_template_is_refused_when_campaign_is_created() -> None:
    request = CampaignRequest(provider="p", subject="ok", html="{% if %}")
    with pytest.raises(CampaignError) as info:
        validate_content(request)
    assert info.value.field == "html"


def test_unknown_variable_is_named_when_campaign_is_created() -> None:
    request = CampaignRequest.model_validate(
        {
            "provider": "p",
            "subject": "{{ first }}",
            "html": "{{ known }} {{ partly }}",
            "vars": {"known": 1},
            "recipients": [
                {"email": "a@b.example", "vars": {"first": "A", "partly": 1}},
                {"email": "c@b.example", "vars": {"first": "C"}},
            ],
        }
    )
    with pytest.raises(CampaignError, match="partly"):
        validate_content(request)


def test_text_is_derived_from_html() -> None:
    html = (
        "<html><head><style>p{}</style></head>"
        "<body><h1>Hi &amp; welcome</h1><p>One<br>Two</p></body></html>"
    )
    assert html_to_text(html) == "Hi & welcome\nOne\nTwo"


@pytest.mark.parametrize(
    "html",
    [
        "<h1>Hello {{ name }}</h1><p>Offer: {{ offer }} &amp; more</p>",
        '<p class="{{ cls }}">x</p>{% if vip %}<p>VIP {{ name }}</p>{% endif %}<br>end',
        "<ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>",
        '<a href="{{ url }}">{{ name }}</a>{# a comment #}',
    ],
)
def test_text_derived_once_matches_text_derived_per_message(html: str) -> None:
    """The text template derived from the HTML template renders what html_to_text gives."""
    assert derive_text_template(html) is not None
    compiled = CompiledContent(subject="s", html=html)
    ctx = build_context(
        campaign_vars={
            "offer": "<b>50%</b>",
            "cls": "c",
            "url": "u",
            "vip": True,
            "items": ["a", "b & c"],
        },
        user_vars={"name": "Zoë & <Co>"},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    out = compiled.render(ctx)
    assert out.text == html_to_text(out.html)


@pytest.mark.parametrize(
    "html",
    [
        "{% raw %}{{ x }}{% endraw %}",  # raw blocks
        "<p>{{ body | safe }}</p>",  # markup passed through
        '<p {% if x %}class="a"{% endif %}>y</p>',  # a block inside a tag
        "<p>{%- if x -%} y {%- endif -%}</p>",  # whitespace control
    ],
)
def test_templates_that_cannot_be_mirrored_fall_back(html: str) -> None:
    assert derive_text_template(html) is None
    compiled = CompiledContent(subject="s", html=html)
    ctx = build_context(
        campaign_vars={"x": True, "body": "<b>hi</b>"},
        user_vars={},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    out = compiled.render(ctx)
    assert out.text == html_to_text(out.html)


@pytest.mark.parametrize(
    "template",
    [
        "<p>{ braces } {{ a }}}} and {{ b }}{</p>",
        "{{ a }}{{ b }}{{ a }}",
        "no names at all {x} {{ '{' }}",
        "{{a}}",
        "it's ''' \\ \"q\" \n{{ a }}')), __import__('os'), ((''",
        "",
    ],
)
def test_plain_templates_render_exactly_as_jinja2_does(template: str) -> None:
    """The fast path for text-and-names templates matches the sandboxed Jinja2 render."""
    from dispatch.template_sandbox import HTML_ENV, TEXT_ENV

    values = {"a": "<b>&'\"{}", "b": 42}
    for env in (HTML_ENV, TEXT_ENV):
        compiled = CompiledContent(subject="s", html=template, text=template)
        ctx = build_context(
            campaign_vars={}, user_vars=values, email="a@b.example", user_id="u", campaign_id="c"
        )
        rendered = compiled.render(ctx)
        expected = env.from_string(template).render(**ctx)
        assert (rendered.html if env is HTML_ENV else rendered.text) == expected


def test_recipient_names_only_when_every_template_is_plain_and_uses_no_service_name() -> None:
    plain = CompiledContent(subject="Hi {{ name }}", html="<p>{{ name }} in {{ city }}</p>")
    assert plain.recipient_names == {"name", "city"}
    service = CompiledContent(subject="Hi", html="<p>{{ name }} {{ unsubscribe_url }}</p>")
    assert service.recipient_names is None
    jinja = CompiledContent(subject="Hi", html="{% if name %}{{ name }}{% endif %}")
    assert jinja.recipient_names is None
    # Rendering from the recipient's own vars gives what the full context gives.
    user = {"name": "Zoë <3", "city": "Lisbon"}
    full = build_context(
        campaign_vars={"name": "campaign"}, user_vars=user, email="a@b.example",
        user_id="u", campaign_id="c",
    )  # fmt: skip
    assert plain.render(user) == plain.render(full)


@pytest.mark.parametrize(
    "parts",
    [
        frozenset({"subject", "html", "text", "amp"}),
        frozenset({"subject", "html"}),
        frozenset({"text"}),
        frozenset({"html", "amp"}),
    ],
)
@pytest.mark.parametrize("text", ["", "Hi {{ a }}, {{ b }}"])
def test_the_plain_renderer_gives_what_the_general_path_gives(
    parts: frozenset[str], text: str
) -> None:
    """Plain templates render through one specialised function per set of parts; the
    results and the errors (naming the part) are those of the general path."""
    content = {
        "subject": " Hi {{ a }} ",
        "html": "<p>{{ a }}</p><p>{{ b }}</p>",
        "text": text,
        "amp": "<b>{{ b }}</b>",
    }
    fast = CompiledContent(**content)
    general = CompiledContent(**content)
    general._fast[parts] = None  # the general path for these parts
    assert fast._plain_renderer(parts) is not None
    values = {"a": "<Ann & co>", "b": 7}
    assert fast.render(values, parts) == general.render(values, parts)
    errors = []
    for compiled in (fast, general):
        with pytest.raises(RenderError) as caught:
            compiled.render({"a": "Ann"}, parts)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "'b' is undefined" in errors[0]


@pytest.mark.parametrize(
    ("html", "text"),
    [
        (
            "<p>Use &#123;&#123; code &#125;&#125; as is, {{ name }}</p>",
            "Use {{ code }} as is, Ann",
        ),
        ("<p>Tag &#123;% if x %&#125; shown</p>", "Tag {% if x %} shown"),
        ("<p>a &#123;{{ name }}&#125;</p>", "a {Ann}"),
    ],
)
def test_braces_written_as_entities_stay_text_in_the_derived_part(html: str, text: str) -> None:
    """html_to_text unescapes &#123; into '{': in the derived text *template* that
    would become Jinja2 code (another variable, or a syntax error at creation)."""
    request = CampaignRequest(provider="p", subject="s", html=html)
    compiled = validate_content(request)
    ctx = build_context(
        campaign_vars={},
        user_vars={"name": "Ann"},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    out = compiled.render(ctx)
    assert out.text == text == html_to_text(out.html)


@pytest.mark.parametrize(
    "template",
    [
        "Hi {{ name | default('friend') }}",
        "Hi {{ name | d('friend') }}",
        "{% if name is defined %}Hi {{ name }}{% else %}Hi{% endif %}",
        "{% if name is undefined %}Hi{% else %}Hi {{ name | upper }}{% endif %}",
        "{% if name is defined and name %}Hi {{ name }}{% else %}Hi{% endif %}",
    ],
)
def test_a_variable_the_template_guards_is_optional(template: str) -> None:
    """Names read through ``default`` or under a ``defined`` test may be missing: the
    campaign is accepted though one recipient lacks it, and that recipient renders."""
    request = CampaignRequest.model_validate(
        {
            "provider": "p",
            "subject": "s",
            "html": template,
            "recipients": [
                {"email": "a@b.example", "vars": {"name": "Ann"}},
                {"email": "c@b.example", "vars": {}},
            ],
        }
    )
    compiled = validate_content(request)
    assert compiled.variables == {"name"} and compiled.required == set()
    ctx = build_context(
        campaign_vars={}, user_vars={}, email="c@b.example", user_id="", campaign_id="c"
    )
    assert compiled.render(ctx).html.startswith("Hi")


def test_a_guard_does_not_make_other_names_optional() -> None:
    compiled = CompiledContent(
        subject="{{ first }}", html="{{ a | default(b) }}{% for i in items %}{{ i }}{% endfor %}"
    )
    assert compiled.required == {"first", "b", "items"}


# --- resource limits: the sandbox guards Python's internals, these guard memory and CPU ---


@pytest.fixture
def render_clock_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The render's time limit out of the way of the limits under test: on a busy machine
    its 2 s stopped a template first (the nested loop building ``x * 100``: 1.75 s beside
    two CPU hogs; the step limit's last templates, in the whole suite)."""
    monkeypatch.setattr(template_sandbox, "MAX_RENDER_SECONDS", 600.0)


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 10**9 }}",  # folded to a constant while compiling: in the API process
        "{{ x * 10**9 }}",
        "{{ 7 ** (10**9) }}",
        "{{ x.ljust(10**9) }}",
        "{{ x|center(10**9) }}",
        "{{ '{:>1000000000}'.format(x) }}",
        "{{ '%1000000000s'|format(x) }}",
        "{{ '%*s' % (10**9, x) }}",
        "{{ lipsum(100000) }}",
        "{{ (x * 999999).replace('a', 'bbbbb') }}",
        "{% set ns = namespace(s=x) %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ x * 100 }}{% endfor %}"
        "{% endfor %}",
    ],
)
def test_a_template_cannot_build_a_huge_value(template: str, render_clock_off: None) -> None:
    with pytest.raises(RenderError, match="exceed the template limits"):
        _render(template, x="a")


@pytest.mark.parametrize(
    "template",
    [
        # Each step is cheap and nothing grows: only the count of steps stops these.
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in (x * 100000)|list %}{% for j in (x * 100000)|map('upper') %}{% endfor %}"
        "{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",  # 2**40 calls, no loop
        "{% for i in range(1000) recursive %}{% if loop.depth < 5 %}{{ loop(range(1000)) }}"
        "{% endif %}{% endfor %}",
        "{% macro m() %}{% for i in range(1000) %}{{ caller() }}{% endfor %}{% endmacro %}"
        "{% call m() %}{% call m() %}{% call m() %}{% endcall %}{% endcall %}{% endcall %}",
    ],
)
def test_a_template_cannot_run_for_hours(template: str, render_clock_off: None) -> None:
    # (the first ran for hours in a worker, printing nothing)
    with pytest.raises(RenderError, match="100,000 loop iterations and macro calls"):
        _render(template, x="a")


def test_the_step_limit_is_exact_and_counts_each_part_and_recipient_afresh(
    render_clock_off: None,
) -> None:
    outer = 100
    inner = MAX_STEPS // outer - 1  # outer + outer * inner steps: the limit exactly
    at_limit = (
        f"{{% for i in range({outer}) %}}{{% for j in range({inner}) %}}{{% endfor %}}"
        "{% endfor %}."
    )
    compiled = CompiledContent(subject=at_limit, html=at_limit, text=at_limit)
    ctx = build_context(
        campaign_vars={}, user_vars={}, email="a@b.example", user_id="u", campaign_id="c"
    )
    for _ in range(2):
        assert compiled.render(ctx).html == "."
    over = at_limit.replace(f"range({inner})", f"range({inner + 1})")
    with pytest.raises(RenderError, match="loop iterations"):
        _render(over)


def test_loops_macros_and_call_blocks_render_as_jinja2_does() -> None:
    import jinja2.sandbox

    template = (
        "{% macro item(p) %}<{{ p }}>{% endmacro %}{% macro wrap() %}[{{ caller() }}]{% endmacro %}"
        "{% for p in items if p != 'b' %}{{ loop.index }}/{{ loop.length }}:{{ item(p) }}"
        "{% if loop.last %}!{% endif %}{% else %}none{% endfor %}"
        "{% for a in [] %}x{% else %}empty{% endfor %}"
        "{% for n in tree recursive %}({{ n.name }}{{ loop(n.kids) if n.kids }}){% endfor %}"
        "{% call wrap() %}called{% endcall %}{{ cycler('o', 'e').next() }}"
    )
    data = {
        "items": ["a", "b", "c"],
        "tree": [{"name": "r", "kids": [{"name": "k", "kids": []}]}, {"name": "s", "kids": []}],
    }
    expected = jinja2.sandbox.ImmutableSandboxedEnvironment(
        autoescape=True, undefined=jinja2.StrictUndefined
    ).from_string(template)
    assert _render(template, **data) == expected.render(**data)


def test_ordinary_arithmetic_formatting_and_numbers_still_render() -> None:
    template = (
        "{{ 2**10 }} {{ x * 3 }} {{ '%5s'|format(x) }} {{ '{:>4}'.format(x) }} "
        "{{ x.ljust(3) }}| {{ points * 1000 }} {{ '{:,}'.format(points) }} {{ [1] + [2] }}"
    )
    assert _render(template, x="a", points=2_500_000) == (
        "1024 aaa     a    a a  | 2500000000 2,500,000 [1, 2]"
    )


@pytest.mark.parametrize(
    "template", ["{{ 10 ** 100000 }}", "{{" + "(" * 3000 + "1" + ")" * 3000 + "}}"]
)
def test_a_template_that_breaks_python_while_compiling_is_no_server_error(
    template: str,
) -> None:
    # (a ValueError or RecursionError escaped: the API answered 500)
    request = CampaignRequest.model_validate(
        {"provider": "p", "subject": "s", "html": template, "from_address": "a@b.example",
         "recipients": [{"email": "a@b.example"}]}
    )  # fmt: skip
    with contextlib.suppress(CampaignError):  # accepted: each message fails as rendered
        validate_content(request)
