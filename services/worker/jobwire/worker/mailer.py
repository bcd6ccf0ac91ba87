"""E-mail over SMTP for the built-in `email` job type: the server's settings, checked
addresses, the message, and sending it with the failures mapped to job outcomes.

Settings come from the environment (`SmtpSettings.from_env`); the password is read
from there only, never from a command-line flag, so it does not show in `ps`.

The variables are listed in `ENVIRONMENT` (and in the README's configuration
reference, generated from it). An empty variable counts as unset. Credentials are only
sent over STARTTLS, or to a server on the loopback interface.

How SMTP failures end a job:

- a connection refused or cut, a timeout, a temporary (4xx) reply: retryable,
  kind "smtp_unavailable" (nothing was delivered, so trying again is safe);
- every recipient refused for good (5xx): not retryable, kind "recipient_refused";
- the sender refused for good: not retryable, kind "sender_refused";
- any other permanent (5xx) reply, such as the message itself refused: not
  retryable, kind "smtp_rejected";
- AUTH refused or not offered: not retryable, kind "smtp_auth";
- STARTTLS not offered, or the server's certificate not trusted: not retryable,
  kind "smtp_tls".

When the server accepts the message for some recipients and refuses others, the
message is sent: `send` returns normally and lists the refused ones. Failing the
job instead would invite a retry that mails the accepted recipients twice.

One case stays ambiguous, as with any SMTP client: a connection lost after the
message was transmitted but before the server confirmed it. That is reported as
retryable, and the next attempt may deliver the message a second time.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import smtplib
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Any

from .errors import ConfigurationError, JobFailed

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_STARTTLS_PORT",
    "DEFAULT_TIMEOUT",
    "ENVIRONMENT",
    "AddressError",
    "Delivery",
    "EnvironmentVariable",
    "Refusal",
    "SmtpSettings",
    "compose",
    "header_text_problem",
    "parse_address",
    "send",
]

DEFAULT_PORT = 25
DEFAULT_STARTTLS_PORT = 587
DEFAULT_TIMEOUT = 30.0

# Bodies are written as quoted-printable or base64 when they are not plain ASCII,
# so the message goes through servers that do not offer 8BITMIME.
_POLICY = SMTP_POLICY.clone(cte_type="7bit")

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_HOST = re.compile(r"[A-Za-z0-9._:-]+|\[[0-9A-Fa-f:.]+\]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class EnvironmentVariable:
    name: str
    default: str
    meaning: str


ENVIRONMENT = (
    EnvironmentVariable("JOBWIRE_SMTP_HOST", "localhost", "the SMTP server's host name or address"),
    EnvironmentVariable("JOBWIRE_SMTP_PORT", "25, or 587 with STARTTLS", "its port"),
    EnvironmentVariable(
        "JOBWIRE_SMTP_STARTTLS",
        "false",
        "upgrade the connection with STARTTLS before anything else is sent (true/false)",
    ),
    EnvironmentVariable(
        "JOBWIRE_SMTP_USERNAME", "", "log in with AUTH as this user (needs the password)"
    ),
    EnvironmentVariable(
        "JOBWIRE_SMTP_PASSWORD",
        "",
        "the password for AUTH; sent only over STARTTLS or to a loopback server",
    ),
    EnvironmentVariable(
        "JOBWIRE_SMTP_FROM", "", 'From address of jobs whose payload has no "from"'
    ),
    EnvironmentVariable(
        "JOBWIRE_SMTP_TIMEOUT",
        "30",
        "seconds to wait for the connection and for each reply of the server",
    ),
    EnvironmentVariable(
        "JOBWIRE_SMTP_CA_FILE",
        "",
        "PEM file of the certificate authorities trusted for STARTTLS, instead of the system's",
    ),
)


class AddressError(ValueError):
    """An e-mail address that cannot be used; the message says why."""


def header_text_problem(value: str) -> str | None:
    """Why `value` cannot go into a header field (line breaks would let it add
    headers of its own), or None when it can."""
    if len(f"x{value}x".splitlines()) > 1:
        return "must not contain line breaks"
    if any((ord(ch) < 32 and ch != "\t") or 127 <= ord(ch) < 160 for ch in value):
        return "must not contain control characters"
    return None


_REGISTRY = HeaderRegistry()


def parse_address(value: str) -> Address:
    """One address, `user@example.com` or `Name <user@example.com>`; raises AddressError.

    Stricter than the standard allows, on purpose: the mailbox must be ASCII (no
    SMTPUTF8), the local part unquoted dot-atoms, the domain a host name (no address
    literals). Display names may be any text.
    """
    problem = header_text_problem(value)
    if problem is not None:
        raise AddressError(f"{value!r} {problem}")
    if not value.strip():
        raise AddressError("an address must not be empty")
    try:
        # An AddressHeader; typeshed only knows the BaseHeader it derives from.
        parsed: Any = _REGISTRY("to", value)
        groups = parsed.groups
        defects = parsed.defects
    except Exception as exc:  # the parser has been seen to raise IndexError
        raise AddressError(f"{value!r} is not a valid e-mail address") from exc
    if len(groups) != 1 or groups[0].display_name is not None:
        raise AddressError(f"{value!r} is not one e-mail address")
    addresses = groups[0].addresses
    if len(addresses) != 1:
        raise AddressError(f"{value!r} is not one e-mail address")
    address: Address = addresses[0]
    if not address.addr_spec.isascii():
        raise AddressError(f"{value!r}: addresses with non-ASCII characters are not supported")
    if defects:
        raise AddressError(f"{value!r} is not a valid e-mail address")
    local, domain = address.username, address.domain
    if not _LOCAL_PART.fullmatch(local) or len(local) > 64:
        raise AddressError(f"{value!r} does not have a valid local part before the @")
    if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
        raise AddressError(f"{value!r} does not have a valid domain name after the @")
    if len(address.addr_spec) > 254:
        raise AddressError(f"{value!r} is longer than 254 characters")
    return address


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    """Where and how the `email` job type sends. Checked when built: unusable values
    raise ConfigurationError. `from_env` reads them from JOBWIRE_SMTP_* variables.

    `port` defaults to 25 here; `from_env` picks 587 when STARTTLS is on and no port
    is given. `sender` is the From address of jobs that do not give one. `timeout`
    bounds the connection and each reply of the server, in seconds. `ca_file`, a PEM
    file, replaces the system's certificate authorities for STARTTLS.
    """

    host: str = "localhost"
    port: int = DEFAULT_PORT
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str | None = None
    # Built once: loading the certificate authorities takes ~25 ms, too much per email.
    _tls: ssl.SSLContext | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.host or not _HOST.fullmatch(self.host):
            raise ConfigurationError(f"SMTP host {self.host!r} is not a host name or address")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigurationError(f"SMTP port must be a number, not {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigurationError(f"SMTP port must be 1 to 65535, not {self.port}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
            raise ConfigurationError(f"SMTP timeout must be a number, not {self.timeout!r}")
        if math.isnan(self.timeout) or math.isinf(self.timeout) or self.timeout <= 0:
            raise ConfigurationError(
                f"SMTP timeout must be a positive number of seconds, not {self.timeout}"
            )
        if bool(self.username) != bool(self.password):
            raise ConfigurationError(
                "SMTP credentials need both a username and a password "
                "(JOBWIRE_SMTP_USERNAME and JOBWIRE_SMTP_PASSWORD)"
            )
        if self.username and not self.starttls and not _is_loopback(self.host):
            raise ConfigurationError(
                f"SMTP credentials would cross the network to {self.host} unencrypted: "
                "turn on STARTTLS (JOBWIRE_SMTP_STARTTLS=true)"
            )
        if self.sender is not None:
            try:
                parse_address(self.sender)
            except AddressError as exc:
                raise ConfigurationError(f"SMTP sender (JOBWIRE_SMTP_FROM): {exc}") from None
        if self.ca_file is not None and not self.starttls:
            raise ConfigurationError(
                "an SMTP CA file (JOBWIRE_SMTP_CA_FILE) is only used with STARTTLS "
                "(JOBWIRE_SMTP_STARTTLS=true)"
            )
        if self.starttls:
            try:
                object.__setattr__(self, "_tls", ssl.create_default_context(cafile=self.ca_file))
            except (OSError, ssl.SSLError) as exc:
                source = (
                    f"the SMTP CA file {self.ca_file!r}" if self.ca_file else "the system's CAs"
                )
                raise ConfigurationError(f"cannot load {source}: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpSettings:
        """Settings from JOBWIRE_SMTP_* variables (see the module's documentation)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            raw = env.get(f"JOBWIRE_SMTP_{name}")
            return raw.strip() if raw is not None and raw.strip() else None

        starttls = False
        raw_starttls = get("STARTTLS")
        if raw_starttls is not None:
            if raw_starttls.lower() in _TRUE:
                starttls = True
            elif raw_starttls.lower() not in _FALSE:
                raise ConfigurationError(
                    f"JOBWIRE_SMTP_STARTTLS must be true or false, not {raw_starttls!r}"
                )
        port = DEFAULT_STARTTLS_PORT if starttls else DEFAULT_PORT
        raw_port = get("PORT")
        if raw_port is not None:
            try:
                port = int(raw_port)
            except ValueError:
                raise ConfigurationError(
                    f"JOBWIRE_SMTP_PORT must be a port number, not {raw_port!r}"
                ) from None
        timeout = DEFAULT_TIMEOUT
        raw_timeout = get("TIMEOUT")
        if raw_timeout is not None:
            try:
                timeout = float(raw_timeout)
            except ValueError:
                raise ConfigurationError(
                    f"JOBWIRE_SMTP_TIMEOUT must be a number of seconds, not {raw_timeout!r}"
                ) from None
        # The password is taken as it is: spaces at its ends may belong to it.
        password = env.get("JOBWIRE_SMTP_PASSWORD") or None
        return cls(
            host=get("HOST") or "localhost",
            port=port,
            starttls=starttls,
            username=get("USERNAME"),
            password=password,
            sender=get("FROM"),
            timeout=timeout,
            ca_file=get("CA_FILE"),
        )

    def tls_context(self) -> ssl.SSLContext:
        """The context STARTTLS uses: certificates and host names verified."""
        if self._tls is None:  # settings without STARTTLS asked for one anyway
            return ssl.create_default_context(cafile=self.ca_file)
        return self._tls


def compose(
    *,
    sender: Address,
    to: Sequence[Address],
    subject: str,
    text: str,
    html: str | None = None,
    cc: Sequence[Address] = (),
    reply_to: Sequence[Address] = (),
) -> EmailMessage:
    """The message with a new Message-ID and Date. Blind copies are not written in it:
    they are envelope recipients only (see `send`)."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = tuple(to)
    if cc:
        message["Cc"] = tuple(cc)
    if reply_to:
        message["Reply-To"] = tuple(reply_to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    # The sender's domain, rather than this host's name: looking that up can take
    # seconds where DNS is slow, and it says nothing about the machine to recipients.
    message["Message-ID"] = make_msgid(domain=sender.domain)
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recipient the server refused, with its reply."""

    address: str
    code: int
    reply: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivery:
    """What the server took: the message's Message-ID, the recipients it accepted and
    those it refused while accepting others."""

    message_id: str
    accepted: tuple[str, ...]
    refused: tuple[Refusal, ...]


def _reply(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())


def _refusals(recipients: Mapping[str, tuple[int, bytes]]) -> tuple[Refusal, ...]:
    return tuple(
        Refusal(address, code, _reply(reply)) for address, (code, reply) in recipients.items()
    )


def _describe(refusals: Sequence[Refusal]) -> str:
    return "; ".join(f"{r.address} ({r.code} {r.reply})" for r in refusals)


def _permanent(code: int) -> bool:
    return 500 <= code <= 599


class _Stage:
    """How far a conversation got, which decides what a failure means."""

    CONNECT = "connect"
    STARTTLS = "starttls"
    LOGIN = "login"
    SEND = "send"


def _unavailable(where: str, detail: str) -> JobFailed:
    return JobFailed(f"SMTP server {where}: {detail}", retryable=True, kind="smtp_unavailable")


def _failure(exc: Exception, stage: str, settings: SmtpSettings) -> JobFailed:
    """The job's failure for an error of smtplib or the network at `stage`."""
    where = f"{settings.host}:{settings.port}"
    # smtplib reports a reply that never came as a lost connection.
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return _unavailable(where, f"no answer within {settings.timeout:g} s")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refusals = _refusals(exc.recipients)
        if refusals and all(_permanent(r.code) for r in refusals):
            return JobFailed(
                f"every recipient was refused: {_describe(refusals)}",
                retryable=False,
                kind="recipient_refused",
            )
        return _unavailable(where, f"recipients refused for now: {_describe(refusals)}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        if stage == _Stage.STARTTLS:
            return JobFailed(
                f"SMTP server {where} does not offer STARTTLS", retryable=False, kind="smtp_tls"
            )
        if stage == _Stage.LOGIN:
            return JobFailed(
                f"SMTP server {where} does not offer AUTH: {exc}",
                retryable=False,
                kind="smtp_auth",
            )
        return JobFailed(f"SMTP server {where}: {exc}", retryable=False, kind="smtp_rejected")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return _unavailable(where, f"connection lost: {exc}")
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = f"{exc.smtp_code} {_reply(exc.smtp_error)}"
        if not _permanent(exc.smtp_code):
            return _unavailable(where, f"answered {reply}")
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return JobFailed(
                f"SMTP server {where} refused the sender {exc.sender}: {reply}",
                retryable=False,
                kind="sender_refused",
            )
        if stage == _Stage.LOGIN:
            return JobFailed(
                f"SMTP server {where} refused the login: {reply}",
                retryable=False,
                kind="smtp_auth",
            )
        if stage == _Stage.STARTTLS:
            return JobFailed(
                f"SMTP server {where} refused STARTTLS: {reply}", retryable=False, kind="smtp_tls"
            )
        return JobFailed(
            f"SMTP server {where} answered {reply}", retryable=False, kind="smtp_rejected"
        )
    if isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and stage == _Stage.STARTTLS
    ):
        return JobFailed(
            f"TLS with the SMTP server {where} failed: {exc}", retryable=False, kind="smtp_tls"
        )
    if isinstance(exc, smtplib.SMTPException) and stage == _Stage.LOGIN:
        # "No suitable authentication method found", for one.
        return JobFailed(f"SMTP server {where}: {exc}", retryable=False, kind="smtp_auth")
    return _unavailable(where, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _close(client: smtplib.SMTP) -> None:
    # The outcome is decided by now: a server that answers QUIT badly changes nothing.
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def send(
    settings: SmtpSettings,
    message: EmailMessage,
    *,
    envelope_from: str,
    recipients: Sequence[str],
    cancelled: threading.Event | None = None,
) -> Delivery:
    """Sends `message` to `recipients` (addresses; blind copies included) and returns
    what the server accepted; raises JobFailed as described in the module's
    documentation. Blocking: call it from a thread.

    `cancelled`, when set before the message is handed over, stops the attempt there.
    """
    stage = _Stage.CONNECT
    try:
        client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    except (OSError, smtplib.SMTPException) as exc:
        raise _failure(exc, stage, settings) from exc
    try:
        client.ehlo_or_helo_if_needed()
        if settings.starttls:
            stage = _Stage.STARTTLS
            client.starttls(context=settings.tls_context())
            client.ehlo()
        if settings.username and settings.password:
            stage = _Stage.LOGIN
            client.login(settings.username, settings.password)
        stage = _Stage.SEND
        if cancelled is not None and cancelled.is_set():
            raise JobFailed("stopped before the message was sent", kind="cancelled")
        refused = client.send_message(message, from_addr=envelope_from, to_addrs=list(recipients))
    except (OSError, smtplib.SMTPException) as exc:
        raise _failure(exc, stage, settings) from exc
    finally:
        _close(client)
    refusals = _refusals(refused)
    refused_addresses = {r.address for r in refusals}
    return Delivery(
        message_id=str(message["Message-ID"]),
        accepted=tuple(r for r in recipients if r not in refused_addresses),
        refused=refusals,
    )
