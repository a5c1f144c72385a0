"""A small typed client of the dispatch API for other services (httpx, synchronous).

    from dispatch.client import DispatchClient

    with DispatchClient("https://dispatch.internal", token="...") as api:
        api.put_provider("acme-smtp", {"kind": "smtp", "host": "...", ...})
        campaign = api.create_campaign({"id": "spring-1", "provider": "acme-smtp",
                                        "subject": "Hi {{ name }}", "html": "...",
                                        "draft": True})
        added = api.append_recipients(  # streamed; each recipient needs its {{ name }}
            "spring-1", ({"email": e, "vars": {"name": n}} for e, n in people)
        )
        print(added.appended, added.errors)  # refused recipients are listed, not raised
        api.start_campaign("spring-1")
        print(api.wait("spring-1").sent)

Errors are raised as :class:`DispatchAPIError` subclasses carrying the status, the
server's ``detail``, the ``field`` at fault and every problem named (``errors``)::

    DispatchAPIError          any refusal; a 404 that names no resource (a wrong base_url)
    ├── Unauthorized          401
    ├── NotFound              404 naming the campaign, provider or address
    ├── Conflict              409
    ├── Gone                  410
    ├── InvalidRequest        422
    └── Unavailable           also a ConnectionError: nothing answered, a timeout, or
                              502/503/504 (the service's Redis cannot serve)

Retries: a request that never reached the server (connection refused, DNS, connect
timeout) is sent again, up to ``retries`` times; so is an idempotent one whose answer was
lost (a read timeout, a dropped connection) or was 502/503/504. Idempotent are reads,
PUT and DELETE, ``create_campaign`` (it always sends an ``id``, making one up when the
body has none, so a repeat is recognised: one campaign, never two; with inline
recipients a repeat answers once the whole list is stored, storing the rest itself when
the first request failed or died part-way), pause, resume and cancel.
``start_campaign``, ``retry_failed``, ``test_provider`` (a real message),
``append_recipients`` and ``add_suppressions`` (their iterable is read once) are not
repeated after their request may have arrived: the :class:`Unavailable` they raise says so.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn, Protocol, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from dispatch.api.schemas import (
    AppendProblem,
    AppendResult,
    CampaignPage,
    CampaignSummary,
    FieldProblem,
    MessageOutcome,
    MessagePage,
    PreferencesView,
    ProviderList,
    ProviderView,
    RetryResult,
    SuppressionEntry,
    SuppressionImportResult,
    SuppressionPage,
    TestEmailResult,
    UnsubscribeTokenView,
)
from dispatch.models import CampaignRequest, Recipient, is_settling

M = TypeVar("M", bound=BaseModel)
T_co = TypeVar("T_co", covariant=True)
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
# A test email's answer: the API takes up to its 60 s deadline (dispatch.test_email)
# to answer, so a read timeout of 60 s gave up just before it ("may have arrived").
TEST_READ_SECONDS = 75.0
RETRY_BACKOFF_SECONDS = 0.5  # doubled at each retry
MAX_RETRY_WAIT_SECONDS = 30.0  # a longer Retry-After is not waited for
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
APPEND_LINES_PER_CHUNK = 500  # NDJSON lines per write while streaming an append
MAX_LISTED_PROBLEMS = 1000  # as the API: an append lists this many bad recipients
FINISHED = frozenset({"completed", "cancelled", "expired"})
WAITING = frozenset({"paused", "draft"})  # for a person (or a caller) to act: wait() ends
# How long wait() waits for a cancelled campaign's unsent messages to be settled while
# their count does not fall (a worker settles a big one's in seconds).
SETTLE_WAIT_SECONDS = 60.0


class DispatchAPIError(Exception):
    """The API refused a request; ``status_code``, ``detail`` and ``field`` say why.

    ``errors`` lists every problem the answer named (``field`` and ``message`` each):
    ``detail`` names the first (``"subject: Field required (and 2 more)"``); a recipient
    append cut short lists the bad recipients before the break (``line 3: ...``).

    Subclasses: :class:`Unauthorized` (401), :class:`NotFound` (404), :class:`Conflict`
    (409), :class:`Gone` (410), :class:`InvalidRequest` (422).
    """

    def __init__(
        self,
        status_code: int,
        detail: str,
        field: str | None = None,
        errors: Sequence[FieldProblem] = (),
    ) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.field = field
        self.errors = list(errors)


class Unauthorized(DispatchAPIError):
    """Missing or wrong bearer token."""


class NotFound(DispatchAPIError):
    """No such campaign, provider or suppression."""


class Conflict(DispatchAPIError):
    """The id is taken by other content, the campaign's status forbids the operation, or
    a test message's address is suppressed (``field`` ``to``)."""


class Gone(DispatchAPIError):
    """The campaign's per-message records were removed (``DISPATCH_RETENTION_DAYS``)."""


class InvalidRequest(DispatchAPIError):
    """The body or a parameter is invalid; ``field`` names it."""


class Unavailable(DispatchAPIError, ConnectionError):
    """The API could not be reached or answered 502/503/504, after the client's retries.

    ``status_code`` is 0 when nothing answered; the exception it stems from is chained.
    """


_ERRORS: dict[int, type[DispatchAPIError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: InvalidRequest,
}


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    detail = str((body.get("detail") if isinstance(body, dict) else None) or "")
    field = body.get("field") if isinstance(body, dict) else None
    errors = _problems(body.get("errors") if isinstance(body, dict) else None)
    code = response.status_code
    error = _ERRORS.get(code, Unavailable if code in UNAVAILABLE_STATUSES else DispatchAPIError)
    if code == 404 and not field:
        # The API names what it did not find; a bare 404 is a route it does not have.
        error = DispatchAPIError
        detail = (
            f"{detail or response.reason_phrase}: no such route at {response.url} "
            "(is base_url the dispatch API's root?)"
        )
    elif response.has_redirect_location:
        # The API never redirects: a proxy in front does (http:// to https://, a moved
        # host). Not followed: a POST's body would be lost, or sent again (307, 308).
        detail = (
            f"{response.reason_phrase}: {response.url} is redirected to "
            f"{response.headers['location']} (use the API's own address as base_url)"
        )
    raise error(code, detail or response.reason_phrase, field, errors)


def _names_missing(response: httpx.Response) -> bool:
    """Whether ``response`` is the API's 404 for a resource it names (not a route)."""
    if response.status_code != 404:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and bool(body.get("field"))


def _problems(listed: Any) -> list[FieldProblem]:
    """The ``errors`` of an error answer (those of another shape, a proxy's, left out)."""
    if not isinstance(listed, list):
        return []
    problems = []
    for item in listed:
        with contextlib.suppress(ValidationError):
            problems.append(FieldProblem.model_validate(item))
    return problems


class _Lines:
    """The recipients as NDJSON, a few hundred lines per chunk (never the whole list).

    A recipient that cannot be written as JSON (a ``Decimal`` from a database, an
    integer beyond 64 bits) goes as a blank line, which the API skips but counts: it is
    listed in ``problems`` at its own line (the API's line numbers stay the caller's)
    and its neighbours are sent. No recipient at all is sent as ``[]``."""

    def __init__(self, recipients: Iterable[Recipient | Mapping[str, Any]]) -> None:
        self._recipients = recipients
        self.problems: list[AppendProblem] = []  # the first MAX_LISTED_PROBLEMS
        self.unwritable = 0
        self.written = 0

    def __iter__(self) -> Iterator[bytes]:
        lines: list[bytes] = []
        for line, recipient in enumerate(self._recipients, 1):
            try:
                lines.append(orjson.dumps(recipient))
                self.written += 1
            except orjson.JSONEncodeError as exc:
                self.unwritable += 1
                if len(self.problems) < MAX_LISTED_PROBLEMS:
                    field, why = _unwritable(recipient, exc)
                    self.problems.append(
                        AppendProblem(line=line, field=field, message=f"not sent: {why}")
                    )
                lines.append(b"")
            if len(lines) >= APPEND_LINES_PER_CHUNK:
                yield b"\n".join(lines) + b"\n"
                lines = []
        if lines:
            yield b"\n".join(lines) + b"\n"
        elif not self.written and not self.unwritable:
            # None at all (a day without new bounces): an empty array, nothing to add.
            # An empty body is refused (422 "empty"), as a file sent by mistake empty is.
            yield b"[]"

    def into(self, result: AppendResult) -> AppendResult:
        """``result`` with the recipients that were not sent among its errors."""
        if self.unwritable:
            result.rejected += self.unwritable
            result.errors, result.errors_truncated = self._merged(result.errors, result.rejected)
        return result

    def into_import(self, result: SuppressionImportResult) -> SuppressionImportResult:
        """``result`` with the items that were not sent among its errors (``invalid``)."""
        if self.unwritable:
            result.invalid += self.unwritable
            result.errors, result.errors_truncated = self._merged(result.errors, result.invalid)
        return result

    def _merged(self, errors: list[AppendProblem], in_all: int) -> tuple[list[AppendProblem], bool]:
        """The API's ``errors`` and those not sent, in line order, the first listed; and
        whether some of the ``in_all`` are not."""
        listed = sorted([*errors, *self.problems], key=lambda p: p.line or 0)
        return listed[:MAX_LISTED_PROBLEMS], len(listed[:MAX_LISTED_PROBLEMS]) < in_all


def _unwritable(value: Any, exc: orjson.JSONEncodeError) -> tuple[str, str]:
    """The dotted path of the first value in ``value`` that orjson cannot write (``body``
    when it is the recipient itself), and why."""
    path: list[str] = []
    while isinstance(value, Mapping | list | tuple):
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            try:
                orjson.dumps(item)
            except orjson.JSONEncodeError:
                path.append(str(key))
                value = item
                break
        else:  # (only a key can be at fault: orjson writes str keys only)
            break
    return ".".join(path) or "body", str(exc)


def _segment(value: str, what: str, safe: str = "") -> str:
    """``value`` as one path segment, whatever it holds: a ``/``, ``?`` or ``#`` would
    make the request another route's or another resource's (``delete_provider("p1?x")``
    deleted ``p1``, ``"../suppressions/ann@example.com"`` an entry), and a segment of
    dots alone is resolved away by httpx (``%2E``: the server reads ``..`` and says it
    has no such resource). Raises ``ValueError`` naming ``what`` when it is empty."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    quoted = quote(value, safe=safe)
    return quoted.replace(".", "%2E") if not quoted.strip(".") else quoted


def _address_path(collection: str, email: str) -> str:
    """``/v1/<collection>/<email>``: an address may hold a ``/`` (sent as ``%2F``)."""
    return f"/v1/{collection}/{_segment(email, 'email', safe='@')}"


def _provider_path(nickname: str, *rest: str) -> str:
    return "/".join(("/v1/providers", _segment(nickname, "nickname"), *rest))


def _campaign_path(campaign_id: str, *rest: str) -> str:
    return "/".join(("/v1/campaigns", _segment(campaign_id, "campaign_id"), *rest))


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters without the unset ones."""
    return {name: value for name, value in values.items() if value is not None}


def _retry_wait(attempt: int, response: httpx.Response | None) -> float:
    """Seconds before the next attempt: the server's ``Retry-After``, else a backoff."""
    hint = response.headers.get("retry-after", "") if response is not None else ""
    wait = float(hint) if hint.isdigit() else RETRY_BACKOFF_SECONDS * 2**attempt
    return min(wait, MAX_RETRY_WAIT_SECONDS)


class DispatchClient:
    """The /v1 API at ``base_url`` (the service's root, without ``/v1``). ``http``
    replaces the ``httpx.Client`` it would make (custom transports, proxies, event hooks,
    ``verify`` for an HTTPS API whose certificate a private CA signed); it is closed with
    this client. ``timeout`` bounds each network step (connect, each read and write),
    ``http``'s too (httpx's own default, 5 s, is shorter than the API takes to store a
    long inline list), not a whole streamed append (a test email's answer is read for at
    least ``TEST_READ_SECONDS``); ``retries``: see the module's doc."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        http: httpx.Client | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://: {base_url!r}")
        self._base = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout)
        self._http = http or httpx.Client(timeout=self._timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._retries = max(0, retries)

    def __enter__(self) -> DispatchClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send, retrying as the module's doc says; ``idempotent`` defaults to True for
        every method but POST. Raises :class:`DispatchAPIError` subclasses."""
        if idempotent is None:
            idempotent = method != "POST"
        headers = {**self._headers, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", self._timeout)
        url = self._base + path
        attempt = 0
        arrived = False  # a previous attempt may have been applied
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.request(method, url, headers=headers, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure: Exception = exc  # never reached the server: safe to send again
                again = "content" not in kwargs or isinstance(kwargs["content"], bytes)
            except httpx.TransportError as exc:
                failure, again, arrived = exc, idempotent, True
            else:
                if response.status_code not in UNAVAILABLE_STATUSES:
                    if not (method == "DELETE" and arrived and _names_missing(response)):
                        _raise_for(response)  # (else the first attempt deleted it)
                    return response
                failure, again = Exception(response.reason_phrase), idempotent
                arrived |= response.status_code != 503  # a 503 is the API's: nothing done
            if not again or attempt >= self._retries:
                self._give_up(method, url, failure, response, again)
            time.sleep(_retry_wait(attempt, response))
            attempt += 1

    def _give_up(
        self,
        method: str,
        url: str,
        failure: Exception,
        response: httpx.Response | None,
        retried: bool,
    ) -> NoReturn:
        if response is not None:
            _raise_for(response)  # raises Unavailable with the server's detail
        tries = f"after {self._retries + 1} attempts" if retried else "not retried"
        if isinstance(failure, httpx.ConnectError | httpx.ConnectTimeout):
            what = "could not connect"
        else:
            what = "the request may have arrived, its answer did not"
        detail = f"{method} {url}: {what} ({type(failure).__name__}: {failure}; {tries})"
        raise Unavailable(0, detail) from failure

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    # -- providers ---------------------------------------------------------------------

    def put_provider(self, nickname: str, config: Mapping[str, Any]) -> ProviderView:
        """Create or replace a provider; raises :class:`InvalidRequest` naming the field."""
        return self._model(ProviderView, "PUT", _provider_path(nickname), json=dict(config))

    def get_provider(self, nickname: str) -> ProviderView:
        """Raises :class:`NotFound`."""
        return self._model(ProviderView, "GET", _provider_path(nickname))

    def list_providers(self) -> list[ProviderView]:
        return self._model(ProviderList, "GET", "/v1/providers").items

    def delete_provider(self, nickname: str) -> None:
        """Raises :class:`NotFound`."""
        self._request("DELETE", _provider_path(nickname))

    def test_provider(
        self,
        nickname: str,
        to: str,
        vars: Mapping[str, Any] | None = None,
        *,
        allow_suppressed: bool = False,
    ) -> TestEmailResult:
        """Send one real test message; ``error`` is a DESIGN §2 error class or None.
        ``vars``: the recipient's, for an HTTP payload's custom placeholders. Raises
        :class:`Conflict` (``field`` ``to``) when ``to`` is on the suppression list,
        unless ``allow_suppressed``."""
        body: dict[str, Any] = {"to": to, "vars": dict(vars or {})}
        if allow_suppressed:
            body["allow_suppressed"] = True
        return self._test("POST", _provider_path(nickname, "test"), body)

    # -- campaigns ---------------------------------------------------------------------

    def create_campaign(self, body: CampaignRequest | Mapping[str, Any]) -> CampaignSummary:
        """Create (and start, unless a draft) a campaign. Idempotent by ``id``: a body
        without one gets one made up here (the answer's ``id``), so that a retry after a
        lost answer finds the campaign instead of creating a second, with its whole
        inline list. Raises :class:`Conflict` for an id taken by other content,
        :class:`InvalidRequest`, :class:`Unavailable`."""
        data = (
            body.model_dump(mode="json", exclude_none=True)
            if isinstance(body, CampaignRequest)
            else dict(body)
        )
        if data.get("id") is None:
            data["id"] = secrets.token_hex(8)  # as the server would make it
        return self._model(CampaignSummary, "POST", "/v1/campaigns", json=data, idempotent=True)

    def append_recipients(
        self, campaign_id: str, recipients: Iterable[Recipient | Mapping[str, Any]]
    ) -> AppendResult:
        """Stream recipients as NDJSON (any number: the iterable is read lazily).

        Bad recipients are listed in the result (``line``: 1-based position in
        ``recipients``), not raised, those that cannot be written as JSON too (a
        ``Decimal``: convert it first); raises :class:`Conflict` once the campaign has
        started.
        """
        lines = _Lines(recipients)
        path = _campaign_path(campaign_id, "recipients")
        return lines.into(self._stream(AppendResult, path, lines))

    def _stream(self, model: type[M], path: str, lines: _Lines, **params: Any) -> M:
        """POST ``lines`` as NDJSON; raises :class:`InvalidRequest` naming the first line
        that could not be written when none could (the API saw only blank lines)."""
        try:
            return self._model(
                model,
                "POST",
                path,
                content=lines,
                params=_params(**params),
                headers={"Content-Type": "application/x-ndjson"},
            )
        except InvalidRequest as exc:
            if lines.written or not lines.problems:
                raise
            # Nothing could be written: the API saw only blank lines.
            first = lines.problems[0]
            detail = f"line {first.line}: {first.field}: {first.message}"
            if lines.unwritable > 1:
                detail += f" (and {lines.unwritable - 1} more)"
            problems = [
                FieldProblem(field=p.field, message=f"line {p.line}: {p.message}")
                for p in lines.problems
            ]
            raise InvalidRequest(exc.status_code, detail, first.field, problems) from None

    def get_campaign(self, campaign_id: str) -> CampaignSummary:
        """Raises :class:`NotFound`."""
        return self._model(CampaignSummary, "GET", _campaign_path(campaign_id))

    def list_campaigns(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> CampaignPage:
        """One page of campaigns, newest first (see :meth:`iter_campaigns`)."""
        params = _params(limit=limit, status=status, cursor=cursor)
        return self._model(CampaignPage, "GET", "/v1/campaigns", params=params)

    def iter_campaigns(
        self, *, status: str | None = None, page_size: int = 200
    ) -> Iterator[CampaignSummary]:
        """Every campaign (in that status), newest first, page after page; campaigns
        created meanwhile may or may not show, none shows twice."""
        return _walk(
            lambda cursor: self.list_campaigns(status=status, cursor=cursor, limit=page_size)
        )

    def _operation(self, campaign_id: str, name: str, *, idempotent: bool) -> CampaignSummary:
        path = _campaign_path(campaign_id, name)
        return self._model(CampaignSummary, "POST", path, idempotent=idempotent)

    def start_campaign(self, campaign_id: str) -> CampaignSummary:
        """Raises :class:`Conflict` unless it is a draft or scheduled (a start repeated
        after a lost answer finds it ``running``: read it with :meth:`get_campaign`)."""
        return self._operation(campaign_id, "start", idempotent=False)

    def pause_campaign(self, campaign_id: str) -> CampaignSummary:
        """A paused campaign stays paused (no error)."""
        return self._operation(campaign_id, "pause", idempotent=True)

    def resume_campaign(self, campaign_id: str) -> CampaignSummary:
        """A running campaign is left running (no error)."""
        return self._operation(campaign_id, "resume", idempotent=True)

    def cancel_campaign(self, campaign_id: str) -> CampaignSummary:
        """A cancelled campaign stays cancelled (no error)."""
        return self._operation(campaign_id, "cancel", idempotent=True)

    def retry_failed(self, campaign_id: str) -> RetryResult:
        return self._model(RetryResult, "POST", _campaign_path(campaign_id, "retry-failed"))

    def test_campaign(
        self,
        campaign_id: str,
        to: str,
        *,
        seq: int | None = None,
        vars: Mapping[str, Any] | None = None,
        allow_suppressed: bool = False,
    ) -> TestEmailResult:
        """Send the message of stored recipient ``seq`` (default 0), or of a recipient
        with ``vars``, to ``to`` alone, as the campaign sends it; the campaign does not
        change. ``error`` as for :meth:`test_provider` (``Invalid message``: a template
        cannot render for that recipient). Raises :class:`Conflict` (``field`` ``to``,
        the entry named) when ``to`` is on the suppression list, unless
        ``allow_suppressed``."""
        body: dict[str, Any] = {"to": to}
        if seq is not None:
            body["seq"] = seq
        if vars is not None:
            body["vars"] = dict(vars)
        if allow_suppressed:
            body["allow_suppressed"] = True
        return self._test("POST", _campaign_path(campaign_id, "test"), body)

    def _test(self, method: str, path: str, body: dict[str, Any]) -> TestEmailResult:
        """A test email's request, read for at least its whole deadline."""
        limits = self._timeout
        read = max(limits.read or 0.0, TEST_READ_SECONDS) if limits.read is not None else None
        timeout = httpx.Timeout(
            connect=limits.connect, read=read, write=limits.write, pool=limits.pool
        )
        return self._model(TestEmailResult, method, path, json=body, timeout=timeout)

    def messages(
        self,
        campaign_id: str,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
        email: str | None = None,
        callback: str | None = None,
    ) -> MessagePage:
        """One page of per-message outcomes (see :meth:`iter_messages`); with ``email``
        the messages to that address, all on one page; with ``callback`` (``clicked``,
        ``hard_bounced``, ...) those a callback of that kind was counted for."""
        params = _params(limit=limit, status=status, cursor=cursor, email=email, callback=callback)
        return self._model(
            MessagePage, "GET", _campaign_path(campaign_id, "messages"), params=params
        )

    def iter_messages(
        self,
        campaign_id: str,
        *,
        status: str | None = None,
        callback: str | None = None,
        page_size: int = 500,
    ) -> Iterator[MessageOutcome]:
        """Every message (in that status, counted for that callback), page after page."""
        return _walk(
            lambda cursor: self.messages(
                campaign_id, status=status, callback=callback, cursor=cursor, limit=page_size
            )
        )

    def wait(
        self, campaign_id: str, *, timeout: float = 600.0, interval: float = 1.0
    ) -> CampaignSummary:
        """Poll until the campaign is finished, paused or a draft (which only a start
        moves: one not started yet is answered at once); raises ``TimeoutError``.

        A cancelled or expired campaign is answered once its unsent messages are settled
        (counted ``cancelled`` or ``expired``, not ``queued``), as ``dispatch status
        --follow`` does; when their count stops falling for :data:`SETTLE_WAIT_SECONDS`
        (no worker running), or at the deadline (no ``TimeoutError``: it did end), as it
        is then.

        The API unreachable for a while (a restart, a deploy) is waited out until the
        deadline; past it the last :class:`Unavailable` is raised."""
        deadline = time.monotonic() + timeout
        settling = (0, 0.0)  # a cancelled campaign's queued count, and when it last fell
        while True:
            try:
                summary = self.get_campaign(campaign_id)
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(interval)
                continue
            if is_settling(summary.status, summary.queued, summary.purged_at):
                # A big campaign's unsent messages are settled by a worker after the
                # cancel (or expiry) answered: its summary counts them queued until then.
                if not settling[0] or summary.queued < settling[0]:
                    settling = (summary.queued, time.monotonic())
                now = time.monotonic()
                if now <= deadline and now - settling[1] < SETTLE_WAIT_SECONDS:
                    time.sleep(interval)
                    continue
                return summary  # (not settled in time: returned as they are)
            if summary.status.value in FINISHED or summary.status.value in WAITING:
                return summary
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"campaign {campaign_id} still {summary.status} after {timeout}s"
                )
            time.sleep(interval)

    # -- suppressions ------------------------------------------------------------------

    def get_suppression(self, email: str) -> SuppressionEntry | None:
        """The entry, or None when ``email`` is not suppressed."""
        try:
            return self._model(SuppressionEntry, "GET", _address_path("suppressions", email))
        except NotFound:
            return None

    def suppress(
        self, email: str, *, reason: str = "manual", source: str = "api"
    ) -> SuppressionEntry:
        """Suppress ``email``; the entry stored (an existing one is kept as it is, but
        for the person's own unsubscribe, which this one replaces)."""
        return self._model(
            SuppressionEntry,
            "PUT",
            _address_path("suppressions", email),
            json={"reason": reason, "source": source},
        )

    def unsuppress(self, email: str) -> bool:
        """Remove ``email`` from the list; False if it was not on it."""
        try:
            self._request("DELETE", _address_path("suppressions", email))
        except NotFound:
            return False
        return True

    def add_suppressions(
        self,
        items: Iterable[str | Mapping[str, Any]],
        *,
        reason: str | None = None,
        source: str | None = None,
    ) -> SuppressionImportResult:
        """Suppress many addresses in one streamed request (any number: the iterable is
        read lazily), as ``dispatch suppressions add --file`` does. Each item is an
        address, or ``{"email": ..., "reason": ...}`` with a reason of its own; ``reason``
        is the others' (the API's default ``manual``), ``source`` every entry's (``api``).

        Counts ``added``, ``already_suppressed`` and ``invalid``; bad items are listed in
        the result (``line``: 1-based position in ``items``), not raised. Not repeated
        after the request may have arrived (the iterable is read once): sending the same
        items again is safe, those added count as already suppressed.

        Raises ``TypeError`` for one address or one item given alone (a string is an
        iterable too: ``add_suppressions("ann@example.com")`` sent its 15 characters, each
        an invalid item, and suppressed no one); :meth:`suppress` takes one address.
        """
        if isinstance(items, str | bytes | Mapping):
            raise TypeError(
                f"add_suppressions takes an iterable of items, not one {type(items).__name__}: "
                "put it in a list (or use suppress() for one address)"
            )
        lines = _Lines({"email": i} if isinstance(i, str) else i for i in items)
        result = self._stream(
            SuppressionImportResult, "/v1/suppressions", lines, reason=reason, source=source
        )
        return lines.into_import(result)

    def list_suppressions(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        reason: str | None = None,
        source: str | None = None,
    ) -> SuppressionPage:
        """One step of the scan (see :meth:`iter_suppressions`); with ``reason`` or
        ``source`` (exact) the page may be short or empty and still have a next cursor."""
        params = _params(limit=limit, cursor=cursor, reason=reason, source=source)
        return self._model(SuppressionPage, "GET", "/v1/suppressions", params=params)

    def iter_suppressions(
        self, page_size: int = 500, *, reason: str | None = None, source: str | None = None
    ) -> Iterator[SuppressionEntry]:
        """Every suppressed address (whose reason, source is exactly ``reason``,
        ``source``), page after page (a scan: an entry present throughout comes at least
        once, twice when entries are removed during the walk)."""
        return _walk(
            lambda cursor: self.list_suppressions(
                cursor=cursor, limit=page_size, reason=reason, source=source
            )
        )

    # -- preferences (an address's categories) -------------------------------------------

    def get_preferences(self, email: str) -> PreferencesView:
        """The categories ``email`` switched off, every category, its suppression entry."""
        return self._model(PreferencesView, "GET", _address_path("preferences", email))

    def set_preferences(self, email: str, opted_out: Iterable[str] = ()) -> PreferencesView:
        """Switch off exactly ``opted_out`` for ``email``, every other category on (none:
        subscribed to every category again); :class:`InvalidRequest` for an unknown one."""
        return self._model(
            PreferencesView,
            "PUT",
            _address_path("preferences", email),
            json={"opted_out": list(opted_out)},
        )

    # -- unsubscribe tokens (custom preference centers) ----------------------------------

    def resolve_unsubscribe_token(self, token: str) -> UnsubscribeTokenView:
        """Whose a token (the ``token`` a custom center got) is, and their choices;
        :class:`NotFound` when this service did not issue it."""
        path = f"/v1/unsubscribe-tokens/{_segment(token, 'token')}"
        return self._model(UnsubscribeTokenView, "GET", path)


class _Page(Protocol[T_co]):
    @property
    def items(self) -> Sequence[T_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


def _walk(fetch: Callable[[str | None], _Page[T_co]]) -> Iterator[T_co]:
    """The items of page after page, following ``next_cursor`` until it is null."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
