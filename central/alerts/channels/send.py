"""Sending one message to one channel: HTTP POSTs with aiohttp, e-mail with smtplib on a small
thread pool. Every failure becomes one `DeliveryFailed` with a sentence an operator can act on
(never the channel's URL, which may hold a token) and whether trying again could help."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import aiohttp

from . import formats
from .message import Message, clean
from .spec import Channel, redact_url

ANSWER_BYTES = 2048
# HTTP answers worth another try: the receiver is busy or restarting; other 4xx mean the request
# itself is wrong (a revoked webhook, a bad token) and will be wrong again.
RETRYABLE_STATUS = {408, 425, 429}


class DeliveryFailed(Exception):
    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


# What a failure to deliver means to an operator, the first matching row winning: the exception
# type and its sentence, from the exception, where it went (never a URL's path) and the timeout.
Explain = Callable[[Any, str, float], str]
HTTP_FAILURES: tuple[tuple[type[BaseException], Explain], ...] = (
    (TimeoutError, lambda exc, where, timeout: f"{where} gave no answer within {timeout:g} s"),
    (aiohttp.ClientConnectorCertificateError,
     lambda exc, where, _: f"{where}: TLS certificate not trusted ({exc.certificate_error})"),
    (aiohttp.ClientConnectorError,
     lambda exc, where, _: f"cannot connect to {where}: {exc.os_error.strerror or exc.os_error}"),
    (aiohttp.ServerDisconnectedError, lambda exc, where, _: f"{where} closed the connection without answering"),
    (aiohttp.ClientPayloadError, lambda exc, where, _: f"{where} closed the connection in the middle of its answer"),
    (aiohttp.ClientError, lambda exc, where, _: f"{where}: {type(exc).__name__}"),
    (OSError, lambda exc, where, _: f"{where}: {type(exc).__name__}"),
)
SMTP_FAILURES: tuple[tuple[type[BaseException], Explain], ...] = (
    (ssl.SSLCertVerificationError, lambda exc, where, _: f"{where}: TLS certificate not trusted ({exc.verify_message})"),
    (ssl.SSLError, lambda exc, where, _: f"{where}: TLS failed ({exc.reason or exc})"),
    (smtplib.SMTPServerDisconnected, lambda exc, where, _: f"{where} closed the connection"),
    (TimeoutError, lambda exc, where, timeout: f"{where} gave no answer within {timeout:g} s"),
    (ConnectionRefusedError, lambda exc, where, _: f"cannot connect to {where}: connection refused"),
    (OSError, lambda exc, where, _: f"cannot connect to {where}: {exc.strerror or exc}"),
)


def explained(exc: BaseException, failures: tuple[tuple[type[BaseException], Explain], ...], where: str,
              timeout: float) -> DeliveryFailed:
    """The DeliveryFailed (worth another try) that the first row of `failures` matching `exc` says."""
    explain = next(explain for kind, explain in failures if isinstance(exc, kind))
    return DeliveryFailed(explain(exc, where, timeout))


class Transport:
    """The connections channels share: one HTTP client session, one SMTP thread pool."""

    def __init__(self, timeout: float = 10.0, smtp_threads: int = 4) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._smtp_pool = ThreadPoolExecutor(max_workers=smtp_threads, thread_name_prefix="dvic-smtp")

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No cookies between receivers; connection limits keep a flood of retries bounded.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": formats.USER_AGENT},
                connector=aiohttp.TCPConnector(limit=64, limit_per_host=8),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._smtp_pool.shutdown(wait=False, cancel_futures=True)

    async def deliver(self, channel: Channel, message: Message) -> str:
        """Send; returns the receiver's answer ("HTTP 200 ok", "250 queued as ...")."""
        if channel.kind == "smtp":
            return await self._smtp(channel, message)
        url = channel.url
        if channel.kind == "webhook":
            body, headers = formats.webhook_request(channel, message, time.time())
        elif channel.kind == "ntfy":
            url, body, headers = formats.ntfy_request(channel, message)
        else:
            build = {"slack": formats.slack_body, "mattermost": formats.mattermost_body,
                     "discord": formats.discord_body}[channel.kind]
            body, headers = build(message), {"Content-Type": "application/json"}
        return await self._post(channel, url, body, headers)

    async def _post(self, channel: Channel, url: str, body: bytes, headers: Mapping[str, str]) -> str:
        ca_pem = channel.settings.get("ca_pem")
        tls: ssl.SSLContext | bool = ssl.create_default_context(cadata=ca_pem) if ca_pem else True
        where = redact_url(channel.url)
        try:
            async with self.session.post(
                url, data=body, headers=headers, ssl=tls, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                answer = clean((await response.content.read(ANSWER_BYTES)).decode(errors="replace"), 200)
                status = response.status
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise explained(exc, HTTP_FAILURES, where, self.timeout) from None
        text = f"HTTP {status}" + (f" {answer}" if answer else "")
        if 200 <= status < 300:
            return text
        retry = status >= 500 or status in RETRYABLE_STATUS
        redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
        raise DeliveryFailed(f"{where} answered {text}{redirect}", permanent=not retry)

    async def _smtp(self, channel: Channel, message: Message) -> str:
        email = formats.email_message(channel, message)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._smtp_pool, _smtp_send, channel.settings,
                                      channel.secrets.get("password", ""), email, self.timeout)
        try:
            # Each socket operation has the timeout; the whole dialogue gets a few of them.
            async with asyncio.timeout(self.timeout * 4):
                return await future
        except TimeoutError:
            host = channel.settings["host"]
            raise DeliveryFailed(f"SMTP server {host} did not finish within {self.timeout * 4:g} s") from None


def _smtp_send(settings: Mapping[str, Any], password: str, email: EmailMessage, timeout: float) -> str:
    host, port, security = str(settings["host"]).strip("[]"), int(settings["port"]), settings["security"]
    where = f"SMTP server {host}:{port}"
    ca_pem = settings.get("ca_pem")
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    try:
        client = (smtplib.SMTP_SSL(host, port, timeout=timeout, context=context) if security == "tls"
                  else smtplib.SMTP(host, port, timeout=timeout))
        with client:
            client.ehlo()
            if security == "starttls":
                if not client.has_extn("starttls"):
                    raise DeliveryFailed(f"{where} does not offer STARTTLS: use security tls (implicit TLS, "
                                         "usually port 465) or plain for a relay without TLS", permanent=True)
                client.starttls(context=context)
                client.ehlo()
            if settings.get("user"):
                _login(client, where, str(settings["user"]), password)
            return _transfer(client, where, email)
    except DeliveryFailed:
        raise
    except smtplib.SMTPResponseException as exc:
        raise DeliveryFailed(f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                             permanent=500 <= exc.smtp_code < 600) from None
    except OSError as exc:  # SSL, SMTP and timeout errors are OSErrors
        raise explained(exc, SMTP_FAILURES, where, timeout) from None


def _login(client: smtplib.SMTP, where: str, user: str, password: str) -> None:
    if not client.has_extn("auth"):
        raise DeliveryFailed(f"{where} does not offer AUTH on this connection; check the security setting "
                             "(many servers offer it only after STARTTLS)", permanent=True)
    try:
        client.login(user, password)
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryFailed(f"{where} refused the login of user {user!r}: {exc.smtp_code} {_text(exc.smtp_error)}",
                             permanent=True) from None
    except smtplib.SMTPException as exc:  # no mechanism in common
        raise DeliveryFailed(f"{where} refused the login of user {user!r}: {clean(str(exc), 200)}",
                             permanent=True) from None


def _transfer(client: smtplib.SMTP, where: str, email: EmailMessage) -> str:
    """MAIL, RCPT, DATA by hand: send_message hides the server's final answer, which `test` shows."""
    code, answer = client.mail(str(email["From"]))
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, answer, str(email["From"]))
    recipients = [a.strip() for a in str(email["To"]).split(",")]
    refused = []
    for recipient in recipients:
        code, answer = client.rcpt(recipient)
        if code not in (250, 251):
            refused.append(f"{recipient}: {code} {_text(answer)}")
    if len(refused) == len(recipients):
        client.rset()
        raise DeliveryFailed(f"{where} refused every recipient ({'; '.join(refused)})", permanent=code >= 500)
    code, answer = client.data(email.as_bytes(policy=SMTP_POLICY))
    if code != 250:
        raise smtplib.SMTPDataError(code, answer)
    result = f"{code} {_text(answer)}"
    return result + (f" (refused: {'; '.join(refused)})" if refused else "")


def _text(answer: bytes | str) -> str:
    return clean(answer.decode(errors="replace") if isinstance(answer, bytes) else answer, 200)
