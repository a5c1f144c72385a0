"""The plain-text part derived from a campaign's HTML: per message (:func:`html_to_text`),
or once per campaign as a text template (:func:`derive_text_template`)."""

from __future__ import annotations

import html as html_lib
import re

from jinja2 import TemplateError

from dispatch.template_sandbox import HTML_ENV

_BLOCK_TAGS = re.compile(
    r"<\s*(br|/p|/div|/h[1-6]|/li|/tr|/table|/ul|/ol|/blockquote|hr)\b[^>]*>", re.IGNORECASE
)
# A block's start is a line break too, unless its line holds nothing yet: HTML may leave
# out the end tags of p, li, td, tr (the HTML standard's optional tags, which minifiers
# drop), and "<p>One<p>Two" read "OneTwo". Written as _SOFT_BREAK, settled once the text
# is whole (:func:`_settle_breaks`; for a derived template, once rendered: a block such as
# "{% if %}" between "</p>" and "<p>" renders empty or not).
_OPENING_TAGS = re.compile(r"<\s*(p|div|h[1-6]|tr|table|ul|ol|blockquote)\b[^>]*>", re.IGNORECASE)
_SOFT_BREAK = "\x01"
_SOFT_RUN = re.compile("(\x01[ \t\x01]*)")  # a run of them, the white space after
_ITEM_TAGS = re.compile(r"<\s*li\b[^>]*>", re.IGNORECASE)  # a list item: "- item"
_CELL_TAGS = re.compile(r"<\s*/?t[dh]\b[^>]*>", re.IGNORECASE)  # a row's cells apart
_LINK_OPENING = re.compile(r"<a\b([^>]*)>", re.IGNORECASE)
_LINK_CLOSING = re.compile(r"</a\s*>", re.IGNORECASE)
_HREF = re.compile(r"""(?:^|\s)href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_DROPPED = ("script", "style", "head")  # elements dropped with their content
_EMPTY_COMMENT = re.compile(r"-?>")  # right after "<!--": "<!-->" and "<!--->" (HTML)
_COMMENT_END = re.compile(r"--!?>")
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n+")


def _drop_elements(html: str) -> str:
    r"""``html`` without its comments and its script, style and head elements (content
    included).

    A comment's text is no one's to read, and email HTML holds a lot of it: Outlook's
    conditional comments (``<!--[if mso]>...<![endif]-->``) carry the VML copy of each
    "bulletproof" button, which showed its label twice in the text part, and a ``>`` within
    a comment left its end (``nav -->``) as text. Each opening's end is searched for once:
    ``<(script|...)\b.*?</\1\s*>`` tried that search again from every opening tag, so
    text of many unclosed ones took time in the square of its length (and held the GIL: a
    campaign's HTML froze the API).
    """
    names = list(_DROPPED)
    comments = True
    out: list[str] = []
    at = 0
    while names or comments:
        wanted = (["!--"] if comments else []) + ([rf"({'|'.join(names)})\b"] if names else [])
        opening = re.compile(rf"<(?:{'|'.join(wanted)})", re.IGNORECASE).search(html, at)
        if opening is None:
            break
        if opening[1] is None:  # a comment
            start = opening.end()
            closing = _EMPTY_COMMENT.match(html, start) or _COMMENT_END.search(html, start)
            if closing is None:  # nor for any later comment: kept as text
                comments = False
                continue
        else:
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


def _settle_breaks(text: str, *, template: bool = False) -> str:
    """``text`` with each run of :data:`_SOFT_BREAK` a line break, or nothing where its
    line holds nothing before it (a block that ended, the text's start) or after it.

    With ``template`` (a derived template's text), a run next to an expression or a
    block (``\x00n\x00``) is kept, for :func:`tidy_derived` to settle in each message:
    what it renders decides.
    """
    parts = _SOFT_RUN.split(text)  # text, run, text, run, ..., text
    out = [parts[0]]
    for i in range(1, len(parts), 2):
        before, after = out[-1].rstrip(" \t"), parts[i + 1]
        # (only the first part can be empty: the others start where a run ended)
        line_start = before == "" or before.endswith("\n")
        if template and not line_start and "\x00" in (before[-1], after[:1]):
            out.append(parts[i])
        else:
            out[-1] = before
            if not (line_start or after[:1] in ("", "\n")):
                out.append("\n")
        out.append(after)
    return "".join(out)


def html_to_text(html: str, *, settle: bool = True) -> str:
    """A plain-text alternative derived from HTML: block tags become line breaks, list
    items lines of their own (``- item``), links ``text (address)``. ``settle``: False
    for a template, whose soft breaks :func:`tidy_derived` settles once rendered.

    Linear in the length of ``html`` (it may be a campaign's whole template).
    """
    text = _show_links(_drop_elements(html))
    text = _sub_tags(_BLOCK_TAGS, "\n", text)
    text = _sub_tags(_ITEM_TAGS, f"{_SOFT_BREAK}- ", text)
    text = _sub_tags(_OPENING_TAGS, _SOFT_BREAK, text)
    text = _sub_tags(_CELL_TAGS, " ", text)
    text = html_lib.unescape(_sub_tags(_TAGS, "", text))
    text = _SPACES.sub(" ", text)
    if settle and _SOFT_BREAK in text:
        text = _settle_breaks(text)
    return _BLANKS.sub("\n\n", "\n".join(line.strip() for line in text.split("\n"))).strip()


def tidy_derived(text: str) -> str:
    """A rendered derived text template as :func:`html_to_text` ends: soft breaks
    settled, blank lines where a loop's text meets the template's (``</li>`` then
    ``</ul>``) made one."""
    if _SOFT_BREAK in text:
        text = _settle_breaks(text)
    if text.count("\n") < 2:  # (no blank line to merge: most messages' text, per message)
        return text.strip()
    return _BLANKS.sub("\n\n", text).strip()


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what Jinja2's lexer takes for one
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
        tokens = list(HTML_ENV.lex(html))
    except TemplateError:
        return None
    # Jinja2 reads every line break as "\n" and drops the last one (keep_trailing_newline
    # is off), so is the rendered HTML: compared with the template as written, one ending
    # with a line break (as files do) or written with CRLF was never derived once, and
    # each of its messages took html_to_text (about 60 µs, more for a long one).
    lines = _LINE_BREAK.split(html)
    if lines[-1] == "":
        del lines[-1]
    if "".join(value for _, _, value in tokens) != "\n".join(lines):
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
    text = html_to_text("".join(pieces), settle=False)
    # The soft breaks that text on both sides decides are settled here, once; those next
    # to an expression or a block are settled in each message's text (tidy_derived).
    text = _settle_breaks(text, template=True)
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
