"""A small typed client of the dispatch API for other services (httpx, synchronous).

    from dispatch.client import DispatchClient

    with DispatchClient("https://dispatch.internal", token="...") as api:
        api.put_provider("acme-smtp", {"kind": "smtp", "host": "...", ...})
        campaign = api.create_campaign({"id": "spring-1", "provider": "acme-smtp",
                                        "subject": "Hi {{ name }}", "html": "...",
                                        "draft": True})
        api.append_recipients("spring-1", ({"email": e} for e in addresses))  # streamed
        api.start_campaign("spring-1")
        print(api.wait("spring-1").sent)

Errors are raised as :class:`DispatchAPIError` subclasses carrying the status, the
server's ``detail`` and the ``field`` at fault.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel

from dispatch.api.schemas import (
    AppendResult,
    CampaignPage,
    CampaignSummary,
    MessageOutcome,
    MessagePage,
    ProviderList,
    ProviderView,
    RetryResult,
    SuppressionEntry,
    SuppressionPage,
    TestEmailResult,
)
from dispatch.models import CampaignRequest, Recipient

M = TypeVar("M", bound=BaseModel)
T_co = TypeVar("T_co", covariant=True)
DEFAULT_TIMEOUT = 60.0
APPEND_LINES_PER_CHUNK = 500  # NDJSON lines per write while streaming an append
FINISHED = frozenset({"completed", "cancelled", "expired"})


class DispatchAPIError(Exception):
    """The API refused a request; ``status_code``, ``detail`` and ``field`` say why.

    Subclasses: :class:`Unauthorized` (401), :class:`NotFound` (404), :class:`Conflict`
    (409), :class:`Gone` (410), :class:`InvalidRequest` (422).
    """

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.field = field


class Unauthorized(DispatchAPIError):
    """Missing or wrong bearer token."""


class NotFound(DispatchAPIError):
    """No such campaign, provider or suppression."""


class Conflict(DispatchAPIError):
    """The id is taken by other content, or the campaign's status forbids the operation."""


class Gone(DispatchAPIError):
    """The campaign's per-message records were removed (``DISPATCH_RETENTION_DAYS``)."""


class InvalidRequest(DispatchAPIError):
    """The body or a parameter is invalid; ``field`` names it."""


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
    detail = body.get("detail") if isinstance(body, dict) else None
    field = body.get("field") if isinstance(body, dict) else None
    error = _ERRORS.get(response.status_code, DispatchAPIError)
    raise error(response.status_code, str(detail or response.reason_phrase), field)


def _ndjson(recipients: Iterable[Recipient | Mapping[str, Any]]) -> Iterator[bytes]:
    """The recipients as NDJSON, a few hundred lines per chunk (never the whole list)."""
    lines: list[bytes] = []
    for recipient in recipients:
        lines.append(orjson.dumps(recipient))
        if len(lines) >= APPEND_LINES_PER_CHUNK:
            yield b"\n".join(lines) + b"\n"
            lines = []
    if lines:
        yield b"\n".join(lines) + b"\n"


def _params(**values: Any) -> dict[str, Any]:
    """Query parameters without the unset ones."""
    return {name: value for name, value in values.items() if value is not None}


class DispatchClient:
    """The /v1 API at ``base_url``. ``http`` replaces the ``httpx.Client`` it would make
    (custom transports, proxies, event hooks); it is closed with this client."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._http = http or httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

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

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        response = self._http.request(method, self._base + path, headers=headers, **kwargs)
        _raise_for(response)
        return response

    def _model(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        return model.model_validate(self._request(method, path, **kwargs).json())

    # -- providers ---------------------------------------------------------------------

    def put_provider(self, nickname: str, config: Mapping[str, Any]) -> ProviderView:
        """Create or replace a provider; raises :class:`InvalidRequest` naming the field."""
        return self._model(ProviderView, "PUT", f"/v1/providers/{nickname}", json=dict(config))

    def get_provider(self, nickname: str) -> ProviderView:
        """Raises :class:`NotFound`."""
        return self._model(ProviderView, "GET", f"/v1/providers/{nickname}")

    def list_providers(self) -> list[ProviderView]:
        return self._model(ProviderList, "GET", "/v1/providers").items

    def delete_provider(self, nickname: str) -> None:
        """Raises :class:`NotFound`."""
        self._request("DELETE", f"/v1/providers/{nickname}")

    def test_provider(
        self, nickname: str, to: str, vars: Mapping[str, Any] | None = None
    ) -> TestEmailResult:
        """Send one real test message; ``error`` is a DESIGN §2 error class or None.
        ``vars``: the recipient's, for an HTTP payload's custom placeholders."""
        body = {"to": to, "vars": dict(vars or {})}
        return self._model(TestEmailResult, "POST", f"/v1/providers/{nickname}/test", json=body)

    # -- campaigns ---------------------------------------------------------------------

    def create_campaign(self, body: CampaignRequest | Mapping[str, Any]) -> CampaignSummary:
        """Create (and start, unless a draft) a campaign. Idempotent by ``id``; raises
        :class:`Conflict` for an id taken by other content, :class:`InvalidRequest`."""
        data = (
            body.model_dump(mode="json", exclude_none=True)
            if isinstance(body, CampaignRequest)
            else dict(body)
        )
        return self._model(CampaignSummary, "POST", "/v1/campaigns", json=data)

    def append_recipients(
        self, campaign_id: str, recipients: Iterable[Recipient | Mapping[str, Any]]
    ) -> AppendResult:
        """Stream recipients as NDJSON (any number: the iterable is read lazily).

        Bad recipients are listed in the result, not raised; raises :class:`Conflict`
        once the campaign has started.
        """
        return self._model(
            AppendResult,
            "POST",
            f"/v1/campaigns/{campaign_id}/recipients",
            content=_ndjson(recipients),
            headers={"Content-Type": "application/x-ndjson"},
        )

    def get_campaign(self, campaign_id: str) -> CampaignSummary:
        """Raises :class:`NotFound`."""
        return self._model(CampaignSummary, "GET", f"/v1/campaigns/{campaign_id}")

    def list_campaigns(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> CampaignPage:
        params = _params(limit=limit, status=status, cursor=cursor)
        return self._model(CampaignPage, "GET", "/v1/campaigns", params=params)

    def _operation(self, campaign_id: str, name: str) -> CampaignSummary:
        return self._model(CampaignSummary, "POST", f"/v1/campaigns/{campaign_id}/{name}")

    def start_campaign(self, campaign_id: str) -> CampaignSummary:
        """Raises :class:`Conflict` unless it is a draft."""
        return self._operation(campaign_id, "start")

    def pause_campaign(self, campaign_id: str) -> CampaignSummary:
        return self._operation(campaign_id, "pause")

    def resume_campaign(self, campaign_id: str) -> CampaignSummary:
        return self._operation(campaign_id, "resume")

    def cancel_campaign(self, campaign_id: str) -> CampaignSummary:
        return self._operation(campaign_id, "cancel")

    def retry_failed(self, campaign_id: str) -> RetryResult:
        return self._model(RetryResult, "POST", f"/v1/campaigns/{campaign_id}/retry-failed")

    def messages(
        self,
        campaign_id: str,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> MessagePage:
        """One page of per-message outcomes (see :meth:`iter_messages`)."""
        params = _params(limit=limit, status=status, cursor=cursor)
        return self._model(
            MessagePage, "GET", f"/v1/campaigns/{campaign_id}/messages", params=params
        )

    def iter_messages(
        self, campaign_id: str, *, status: str | None = None, page_size: int = 500
    ) -> Iterator[MessageOutcome]:
        """Every message (in that status), page after page."""
        return _walk(
            lambda cursor: self.messages(campaign_id, status=status, cursor=cursor, limit=page_size)
        )

    def wait(
        self, campaign_id: str, *, timeout: float = 600.0, interval: float = 1.0
    ) -> CampaignSummary:
        """Poll until the campaign is finished (or paused); raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while True:
            summary = self.get_campaign(campaign_id)
            if summary.status.value in FINISHED or summary.status.value == "paused":
                return summary
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"campaign {campaign_id} still {summary.status} after {timeout}s"
                )
            time.sleep(interval)

    # -- suppressions ------------------------------------------------------------------

    def _suppression_path(self, email: str) -> str:
        return f"/v1/suppressions/{quote(email, safe='@')}"

    def get_suppression(self, email: str) -> SuppressionEntry | None:
        """The entry, or None when ``email`` is not suppressed."""
        try:
            return self._model(SuppressionEntry, "GET", self._suppression_path(email))
        except NotFound:
            return None

    def suppress(
        self, email: str, *, reason: str = "manual", source: str = "api"
    ) -> SuppressionEntry:
        """Suppress ``email`` (an existing entry is kept as it is)."""
        return self._model(
            SuppressionEntry,
            "PUT",
            self._suppression_path(email),
            json={"reason": reason, "source": source},
        )

    def unsuppress(self, email: str) -> bool:
        """Remove ``email`` from the list; False if it was not on it."""
        try:
            self._request("DELETE", self._suppression_path(email))
        except NotFound:
            return False
        return True

    def list_suppressions(self, *, cursor: str | None = None, limit: int = 100) -> SuppressionPage:
        params = _params(limit=limit, cursor=cursor)
        return self._model(SuppressionPage, "GET", "/v1/suppressions", params=params)

    def iter_suppressions(self, page_size: int = 500) -> Iterator[SuppressionEntry]:
        """Every suppressed address, page after page."""
        return _walk(lambda cursor: self.list_suppressions(cursor=cursor, limit=page_size))


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
