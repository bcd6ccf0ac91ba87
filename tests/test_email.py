"""The built-in `email` job type against a real SMTP server (aiosmtpd on a loopback
port, started by each test): the message that arrives, refusals, an unreachable
server, STARTTLS and AUTH, payload checks; and end to end through a scheduler."""

from __future__ import annotations

import contextlib
import email.message
import email.policy
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from google.protobuf.duration_pb2 import Duration
from jobwire.v1 import job_pb2
from jobwire.worker import (
    ConfigurationError,
    HandlerRegistry,
    JobContext,
    JobFailed,
    Worker,
    builtins,
    register_builtins,
)
from jobwire.worker.mailer import SmtpSettings

from tests.processes import free_port
from tests.support import wait_for
from tests.test_worker_integration import Producer, WorkerThread

SERVER_NAME = "smtp.test"
USERNAME = "mailer"
PASSWORD = "correct horse"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    authenticated: bool
    tls: bool


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps what it receives. It refuses `nobody@...` for
    good, `busy@...` for now, and every message while `refuse_data` is set."""

    received: list[Received] = field(default_factory=list)
    refuse_data: str | None = None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user here"
        if address.startswith("busy@"):
            return "450 4.2.1 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse_data is not None:
            return self.refuse_data
        assert isinstance(envelope.content, bytes)
        # Lines end in CRLF on the wire; stored locally, as a mail server would, with LF.
        content = envelope.content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                message=parsed,
                authenticated=bool(session.authenticated),
                tls=session.ssl is not None,
            )
        )
        return "250 2.0.0 accepted"

    def only(self) -> Received:
        assert len(self.received) == 1, f"{len(self.received)} messages arrived"
        return self.received[0]


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    )
    # A refusal the server itself answers: handled=True would leave the reply to us.
    return AuthResult(success=ok, handled=ok)


class SmtpServer:
    """aiosmtpd on 127.0.0.1 in a thread of the test process."""

    def __init__(self, port: int | None = None, **smtp_options: Any) -> None:
        self.mailbox = Mailbox()
        self.port = port or free_port()
        self.controller = Controller(
            self.mailbox,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname=SERVER_NAME,
            **smtp_options,
        )

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def settings(self, **overrides: Any) -> SmtpSettings:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "sender": "Jobwire <jobs@example.com>",
            "timeout": 10.0,
        }
        values.update(overrides)
        return SmtpSettings(**values)


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    running = SmtpServer().start()
    try:
        yield running
    finally:
        running.stop()


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A throwaway self-signed certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return Certificate(cert=cert, key=key)


@pytest.fixture
def tls_server(certificate: Certificate) -> Iterator[SmtpServer]:
    """Requires STARTTLS, then AUTH, before it takes mail."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    running = SmtpServer(
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticate,
    ).start()
    try:
        yield running
    finally:
        running.stop()


def send(payload: Any, settings: SmtpSettings, ctx: JobContext | None = None) -> Any:
    return builtins.email(payload, ctx or JobContext.standalone(type="email"), smtp=settings)


def failure(payload: Any, settings: SmtpSettings) -> JobFailed:
    with pytest.raises(JobFailed) as caught:
        send(payload, settings)
    return caught.value


MESSAGE = {"to": "ann@example.com", "subject": "Hello", "text": "Hi Ann,\nall is well.\n"}


# -- the message that arrives ---------------------------------------------------------


def test_message_arrives_with_its_headers_and_the_returned_message_id(
    server: SmtpServer,
) -> None:
    result = send(
        {
            "to": ["Ann Example <ann@example.com>", "bob@example.org"],
            "cc": "carol@example.com",
            "bcc": ["dave@example.net"],
            "reply_to": "Help Desk <help@example.com>",
            "subject": "Your report is ready",
            "text": "Hello,\n\nthe report is attached.\n",
            "html": "<p>Hello,</p><p>the report is attached.</p>",
        },
        server.settings(),
    )
    received = server.mailbox.only()
    message = received.message
    assert result == {
        "message_id": message["Message-ID"],
        "accepted": [
            "ann@example.com",
            "bob@example.org",
            "carol@example.com",
            "dave@example.net",
        ],
        "refused": [],
    }
    assert result["message_id"].startswith("<") and result["message_id"].endswith("@example.com>")
    assert received.mail_from == "jobs@example.com"
    assert received.rcpt_tos == result["accepted"]
    assert message["From"] == "Jobwire <jobs@example.com>"
    assert message["To"] == "Ann Example <ann@example.com>, bob@example.org"
    assert message["Cc"] == "carol@example.com"
    assert message["Reply-To"] == "Help Desk <help@example.com>"
    assert message["Subject"] == "Your report is ready"
    assert message["Date"]
    assert "Bcc" not in message  # blind copies are envelope recipients only
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == "Hello,\n\nthe report is attached.\n"
    assert html.get_content().strip() == "<p>Hello,</p><p>the report is attached.</p>"


def test_text_only_message_and_non_ascii_text(server: SmtpServer) -> None:
    result = send(
        {
            "from": "Zoë Ünal <zoe@example.com>",
            "to": "ann@example.com",
            "subject": "Grüße — ✓ erledigt",
            "text": "Schöne Grüße,\nZoë\n",
        },
        server.settings(),
    )
    message = server.mailbox.only().message
    assert message["Message-ID"] == result["message_id"]
    assert message.get_content_type() == "text/plain"
    assert message["Subject"] == "Grüße — ✓ erledigt"
    assert message["From"] == "Zoë Ünal <zoe@example.com>"
    # Encoded text keeps the canonical CRLF line ends inside its encoding.
    assert message.get_content().splitlines() == ["Schöne Grüße,", "Zoë"]
    assert server.mailbox.only().mail_from == "zoe@example.com"


def test_lines_that_look_like_smtp_stay_in_the_body(server: SmtpServer) -> None:
    text = "first\r\n.\r\nMAIL FROM:<evil@example.com>\r\n.\nlast\n"
    send({**MESSAGE, "text": text}, server.settings())
    body = server.mailbox.only().message.get_content()
    assert body.splitlines() == ["first", ".", "MAIL FROM:<evil@example.com>", ".", "last"]


def test_a_recipient_named_twice_is_sent_once(server: SmtpServer) -> None:
    result = send(
        {**MESSAGE, "to": ["ann@example.com", "Ann <ann@example.com>"], "bcc": "ann@example.com"},
        server.settings(),
    )
    assert result["accepted"] == ["ann@example.com"]
    assert server.mailbox.only().rcpt_tos == ["ann@example.com"]


def test_from_defaults_to_the_configured_sender(server: SmtpServer) -> None:
    send(MESSAGE, server.settings(sender="noreply@example.org"))
    received = server.mailbox.only()
    assert received.message["From"] == "noreply@example.org"
    assert received.mail_from == "noreply@example.org"
    assert received.message["Message-ID"].endswith("@example.org>")


def test_without_any_sender_the_payload_is_invalid(server: SmtpServer) -> None:
    failed = failure(MESSAGE, server.settings(sender=None))
    assert (failed.kind, failed.retryable) == ("invalid_payload", False)
    assert "JOBWIRE_SMTP_FROM" in failed.message
    assert server.mailbox.received == []


# -- refusals and failures --------------------------------------------------------------


def test_refused_recipient_is_a_permanent_failure(server: SmtpServer) -> None:
    failed = failure({**MESSAGE, "to": "nobody@example.com"}, server.settings())
    assert (failed.kind, failed.retryable) == ("recipient_refused", False)
    assert "nobody@example.com (550 5.1.1 no such user here)" in failed.message
    assert server.mailbox.received == []


def test_message_accepted_for_some_recipients_succeeds_and_lists_the_refused(
    server: SmtpServer,
) -> None:
    result = send(
        {**MESSAGE, "to": ["ann@example.com", "nobody@example.com"], "cc": "busy@example.com"},
        server.settings(),
    )
    assert result["accepted"] == ["ann@example.com"]
    assert result["refused"] == [
        {"address": "nobody@example.com", "code": 550, "reply": "5.1.1 no such user here"},
        {
            "address": "busy@example.com",
            "code": 450,
            "reply": "4.2.1 mailbox busy, try again later",
        },
    ]
    received = server.mailbox.only()
    assert received.rcpt_tos == ["ann@example.com"]
    assert received.message["Message-ID"] == result["message_id"]


def test_recipient_refused_for_now_is_retryable(server: SmtpServer) -> None:
    failed = failure(
        {**MESSAGE, "to": ["busy@example.com", "nobody@example.com"]}, server.settings()
    )
    assert (failed.kind, failed.retryable) == ("smtp_unavailable", True)
    assert "450" in failed.message


def test_message_refused_for_good(server: SmtpServer) -> None:
    server.mailbox.refuse_data = "554 5.6.0 message content refused"
    failed = failure(MESSAGE, server.settings())
    assert (failed.kind, failed.retryable) == ("smtp_rejected", False)
    assert "554 5.6.0 message content refused" in failed.message


def test_message_refused_for_now_is_retryable(server: SmtpServer) -> None:
    server.mailbox.refuse_data = "451 4.3.0 queue full"
    failed = failure(MESSAGE, server.settings())
    assert (failed.kind, failed.retryable) == ("smtp_unavailable", True)


def test_server_down_is_retryable() -> None:
    port = free_port()  # nothing listens there
    failed = failure(MESSAGE, SmtpSettings(port=port, host="127.0.0.1", sender="a@example.com"))
    assert (failed.kind, failed.retryable) == ("smtp_unavailable", True)
    assert f"127.0.0.1:{port}" in failed.message


def test_server_that_never_answers_is_retryable_after_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete, but no greeting ever comes
        settings = SmtpSettings(
            host="127.0.0.1", port=silent.getsockname()[1], sender="a@example.com", timeout=0.3
        )
        failed = failure(MESSAGE, settings)
    assert (failed.kind, failed.retryable) == ("smtp_unavailable", True)
    assert "no answer within 0.3 s" in failed.message


def test_server_that_hangs_up_is_retryable() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        with listener:
            connection, _ = listener.accept()
            connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    failed = failure(MESSAGE, SmtpSettings(host="127.0.0.1", port=port, sender="a@example.com"))
    thread.join(10)
    assert (failed.kind, failed.retryable) == ("smtp_unavailable", True)


def test_cancelled_job_sends_nothing(server: SmtpServer) -> None:
    ctx = JobContext.standalone(type="email")
    ctx.cancelled.set()
    with pytest.raises(JobFailed) as caught:
        send(MESSAGE, server.settings(), ctx)
    assert caught.value.kind == "cancelled"
    assert server.mailbox.received == []


# -- STARTTLS and AUTH -------------------------------------------------------------------


def test_starttls_and_login(tls_server: SmtpServer, certificate: Certificate) -> None:
    settings = tls_server.settings(
        starttls=True, ca_file=str(certificate.cert), username=USERNAME, password=PASSWORD
    )
    result = send(MESSAGE, settings)
    received = tls_server.mailbox.only()
    assert received.tls and received.authenticated
    assert received.message["Message-ID"] == result["message_id"]
    assert received.message.get_content() == MESSAGE["text"]


def test_wrong_password_is_a_permanent_failure(
    tls_server: SmtpServer, certificate: Certificate
) -> None:
    settings = tls_server.settings(
        starttls=True, ca_file=str(certificate.cert), username=USERNAME, password="wrong"
    )
    failed = failure(MESSAGE, settings)
    assert (failed.kind, failed.retryable) == ("smtp_auth", False)
    assert "wrong" not in failed.message
    assert tls_server.mailbox.received == []


def test_untrusted_certificate_is_a_permanent_failure(tls_server: SmtpServer) -> None:
    # The system's authorities do not know the throwaway certificate.
    settings = tls_server.settings(starttls=True, username=USERNAME, password=PASSWORD)
    failed = failure(MESSAGE, settings)
    assert (failed.kind, failed.retryable) == ("smtp_tls", False)
    assert "certificate" in failed.message


def test_server_without_starttls_is_a_permanent_failure_when_it_is_required(
    server: SmtpServer, certificate: Certificate
) -> None:
    failed = failure(MESSAGE, server.settings(starttls=True, ca_file=str(certificate.cert)))
    assert (failed.kind, failed.retryable) == ("smtp_tls", False)
    assert "STARTTLS" in failed.message
    assert server.mailbox.received == []


def test_server_that_wants_auth_refuses_an_anonymous_sender(
    tls_server: SmtpServer, certificate: Certificate
) -> None:
    failed = failure(MESSAGE, tls_server.settings(starttls=True, ca_file=str(certificate.cert)))
    assert (failed.kind, failed.retryable) == ("sender_refused", False)
    assert "530" in failed.message
    assert tls_server.mailbox.received == []


# -- payload checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (None, "JSON object payload, got null"),
        (["ann@example.com"], "JSON object payload, got an array"),
        ({"subject": "s", "text": "t"}, 'the "to" field is missing'),
        ({**MESSAGE, "to": []}, '"to" must hold at least one address'),
        ({**MESSAGE, "to": 42}, '"to" must be an address or an array of addresses'),
        ({**MESSAGE, "to": [42]}, '"to" must hold strings, got a number'),
        ({**MESSAGE, "to": "not an address"}, "is not a valid e-mail address"),
        ({**MESSAGE, "to": "ann@"}, "is not a valid e-mail address"),
        ({**MESSAGE, "to": "ann@example.com, bob@example.com"}, "is not one e-mail address"),
        ({**MESSAGE, "to": "Ann <ann@example.com"}, "is not a valid e-mail address"),
        ({**MESSAGE, "to": "ann..x@example.com"}, "is not a valid e-mail address"),
        ({**MESSAGE, "to": "ann@exa_mple.com"}, "valid domain name"),
        ({**MESSAGE, "to": "ann@[127.0.0.1]"}, "valid domain name"),
        ({**MESSAGE, "to": "zoë@example.com"}, "non-ASCII"),
        ({**MESSAGE, "to": "ann@bücher.example"}, "non-ASCII"),
        ({**MESSAGE, "to": '"ann smith"@example.com'}, "valid local part"),
        ({**MESSAGE, "to": "ann@-example.com"}, "valid domain name"),
        ({**MESSAGE, "to": "team: ann@example.com;"}, "is not one e-mail address"),
        ({**MESSAGE, "to": ""}, "must not be empty"),
        ({**MESSAGE, "cc": {"a": 1}}, '"cc" must be an address or an array of addresses'),
        ({**MESSAGE, "bcc": ["ok@example.com", "bad"]}, '"bcc"'),
        ({**MESSAGE, "reply_to": "nope"}, '"reply_to"'),
        ({**MESSAGE, "from": "nope"}, '"from"'),
        ({**MESSAGE, "from": ["a@example.com"]}, '"from" must be a string'),
        ({"to": "ann@example.com", "text": "t"}, 'the "subject" field is missing'),
        ({"to": "ann@example.com", "subject": "s"}, 'the "text" field is missing'),
        ({**MESSAGE, "subject": 1}, '"subject" must be a string, got a number'),
        ({**MESSAGE, "text": b"raw"}, '"text" must be a string'),
        ({**MESSAGE, "html": True}, '"html" must be a string, got a boolean'),
        ({**MESSAGE, "attachments": []}, "unknown fields ['attachments']"),
        (
            {**MESSAGE, "to": [f"user{n}@example.com" for n in range(101)]},
            "101 recipients; at most 100",
        ),
    ],
)
def test_invalid_payload_is_not_retried(payload: Any, expected: str, server: SmtpServer) -> None:
    failed = failure(payload, server.settings())
    assert (failed.kind, failed.retryable) == ("invalid_payload", False)
    assert expected in failed.message
    assert server.mailbox.received == []


def test_optional_fields_may_be_null(server: SmtpServer) -> None:
    send({**MESSAGE, "cc": None, "bcc": None, "reply_to": None, "html": None}, server.settings())
    assert server.mailbox.only().message.get_content_type() == "text/plain"


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("subject", "Hello\r\nBcc: victim@example.com"),
        ("subject", "Hello\nX-Injected: yes"),
        ("subject", "Hello\rX-Injected: yes"),
        ("subject", "Hello\u2028X-Injected: yes"),
        ("subject", "Hello\x00"),
        ("to", "ann@example.com\r\nBcc: victim@example.com"),
        ("to", "Ann\n <ann@example.com>"),
        ("cc", ["carol@example.com\nBcc: victim@example.com"]),
        ("bcc", "dave@example.com\r\n"),
        ("reply_to", "help@example.com\r\nX-Injected: yes"),
        ("from", "jobs@example.com\r\nBcc: victim@example.com"),
    ],
)
def test_header_injection_is_refused(field_name: str, value: Any, server: SmtpServer) -> None:
    failed = failure({**MESSAGE, field_name: value}, server.settings())
    assert (failed.kind, failed.retryable) == ("invalid_payload", False)
    assert "line breaks" in failed.message or "control characters" in failed.message
    assert server.mailbox.received == []


# -- settings --------------------------------------------------------------------------------


def test_settings_defaults_from_an_empty_environment() -> None:
    settings = SmtpSettings.from_env({})
    assert settings == SmtpSettings(host="localhost", port=25, starttls=False, timeout=30.0)
    assert settings.username is None and settings.password is None and settings.sender is None


def test_settings_from_the_environment(certificate: Certificate) -> None:
    settings = SmtpSettings.from_env(
        {
            "JOBWIRE_SMTP_HOST": "mail.example.com",
            "JOBWIRE_SMTP_STARTTLS": "true",
            "JOBWIRE_SMTP_USERNAME": "mailer",
            "JOBWIRE_SMTP_PASSWORD": " spaces kept ",
            "JOBWIRE_SMTP_FROM": "Jobs <jobs@example.com>",
            "JOBWIRE_SMTP_TIMEOUT": "2.5",
            "JOBWIRE_SMTP_CA_FILE": str(certificate.cert),
        }
    )
    assert settings.host == "mail.example.com"
    assert settings.port == 587  # the submission port, with STARTTLS and no port given
    assert settings.starttls is True
    assert (settings.username, settings.password) == ("mailer", " spaces kept ")
    assert settings.sender == "Jobs <jobs@example.com>"
    assert settings.timeout == 2.5
    assert settings.ca_file == str(certificate.cert)
    assert "spaces kept" not in repr(settings)
    explicit = SmtpSettings.from_env({"JOBWIRE_SMTP_STARTTLS": "yes", "JOBWIRE_SMTP_PORT": "2525"})
    assert explicit.port == 2525
    empty = SmtpSettings.from_env({"JOBWIRE_SMTP_HOST": "", "JOBWIRE_SMTP_STARTTLS": ""})
    assert (empty.host, empty.starttls) == ("localhost", False)


def test_credentials_in_clear_text_only_to_a_loopback_server() -> None:
    local = SmtpSettings.from_env(
        {"JOBWIRE_SMTP_USERNAME": "u", "JOBWIRE_SMTP_PASSWORD": "p", "JOBWIRE_SMTP_HOST": "::1"}
    )
    assert local.username == "u"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"JOBWIRE_SMTP_PORT": "smtp"}, "JOBWIRE_SMTP_PORT must be a port number, not 'smtp'"),
        ({"JOBWIRE_SMTP_PORT": "0"}, "SMTP port must be 1 to 65535, not 0"),
        ({"JOBWIRE_SMTP_PORT": "70000"}, "SMTP port must be 1 to 65535"),
        ({"JOBWIRE_SMTP_STARTTLS": "ture"}, "JOBWIRE_SMTP_STARTTLS must be true or false"),
        ({"JOBWIRE_SMTP_TIMEOUT": "soon"}, "JOBWIRE_SMTP_TIMEOUT must be a number of seconds"),
        ({"JOBWIRE_SMTP_TIMEOUT": "0"}, "SMTP timeout must be a positive number"),
        ({"JOBWIRE_SMTP_TIMEOUT": "nan"}, "SMTP timeout must be a positive number"),
        ({"JOBWIRE_SMTP_HOST": "mail host"}, "is not a host name or address"),
        ({"JOBWIRE_SMTP_USERNAME": "u"}, "need both a username and a password"),
        ({"JOBWIRE_SMTP_PASSWORD": "p"}, "need both a username and a password"),
        (
            {
                "JOBWIRE_SMTP_HOST": "mail.example.com",
                "JOBWIRE_SMTP_USERNAME": "u",
                "JOBWIRE_SMTP_PASSWORD": "p",
            },
            "unencrypted: turn on STARTTLS",
        ),
        ({"JOBWIRE_SMTP_FROM": "jobs"}, "SMTP sender (JOBWIRE_SMTP_FROM)"),
        (
            {"JOBWIRE_SMTP_STARTTLS": "1", "JOBWIRE_SMTP_CA_FILE": "/nonexistent/ca.pem"},
            "cannot load the SMTP CA file '/nonexistent/ca.pem'",
        ),
        ({"JOBWIRE_SMTP_CA_FILE": "/etc/hosts"}, "only used with STARTTLS"),
    ],
)
def test_unusable_settings_are_refused(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SmtpSettings.from_env(environ)
    assert expected in str(caught.value)


# -- registration ------------------------------------------------------------------------------


def test_registered_with_the_settings_of_the_environment(
    server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBWIRE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("JOBWIRE_SMTP_PORT", str(server.port))
    monkeypatch.setenv("JOBWIRE_SMTP_FROM", "env@example.com")
    registry = HandlerRegistry()
    register_builtins(registry)
    spec = registry.get("email")
    assert spec is not None
    assert not spec.is_async and spec.takes_context  # run in the worker's thread pool
    # Read once, at registration: a later change does not move a running worker.
    monkeypatch.setenv("JOBWIRE_SMTP_PORT", "1")
    result = spec.func(MESSAGE, JobContext.standalone(type="email"))
    received = server.mailbox.only()
    assert received.mail_from == "env@example.com"
    assert received.message["Message-ID"] == result["message_id"]


def test_misconfiguration_is_reported_when_registering(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_SMTP_STARTTLS", "maybe")
    with pytest.raises(ConfigurationError, match="JOBWIRE_SMTP_STARTTLS"):
        register_builtins(HandlerRegistry())
    # Given settings are used as they are, without reading the environment.
    registry = HandlerRegistry()
    register_builtins(registry, smtp=SmtpSettings())
    assert "email" in registry


def test_called_on_its_own_it_reads_the_environment_for_each_job(
    server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBWIRE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("JOBWIRE_SMTP_PORT", str(server.port))
    monkeypatch.setenv("JOBWIRE_SMTP_FROM", "env@example.com")
    builtins.email(MESSAGE, JobContext.standalone(type="email"))
    assert server.mailbox.only().mail_from == "env@example.com"
    monkeypatch.setenv("JOBWIRE_SMTP_PORT", "-1")
    with pytest.raises(JobFailed) as caught:
        builtins.email(MESSAGE, JobContext.standalone(type="email"))
    assert (caught.value.kind, caught.value.retryable) == ("smtp_config", False)


def test_worker_command_refuses_to_start_with_unusable_smtp_settings() -> None:
    environ = {**os.environ, "JOBWIRE_SMTP_PORT": "smtp"}
    done = subprocess.run(
        [sys.executable, "-m", "jobwire.cli.main", "worker", "--target", "127.0.0.1:1"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "JOBWIRE_SMTP_PORT must be a port number" in done.stderr


# -- end to end: a scheduler, a worker, an SMTP server ------------------------------------------


class Jobs(Producer):
    """The integration tests' producer, also waiting on any condition of a job."""

    def wait(
        self, job_id: str, done: Callable[[job_pb2.Job], bool], what: str, timeout: float = 30
    ) -> job_pb2.Job:
        def check() -> job_pb2.Job | None:
            job = self.get(job_id)
            return job if done(job) else None

        return wait_for(check, timeout=timeout, message=f"job {job_id} {what}")


@contextlib.contextmanager
def running_worker(target: str, settings: SmtpSettings) -> Iterator[Worker]:
    worker = Worker(target, concurrency=2)
    register_builtins(worker, smtp=settings)
    running = WorkerThread(worker).start()
    try:
        yield worker
    finally:
        running.stop()


@pytest.fixture
def jobs(scheduler: Any) -> Iterator[Jobs]:
    client = Jobs(scheduler.target)
    try:
        yield client
    finally:
        client.channel.close()


def test_email_job_end_to_end(scheduler: Any, jobs: Jobs, server: SmtpServer) -> None:
    with running_worker(scheduler.target, server.settings()):
        job_id = jobs.submit(
            "email",
            {
                "to": ["Ann <ann@example.com>", "nobody@example.com"],
                "subject": "Job e2e",
                "text": "Sent by a worker.\n",
            },
        )
        job = jobs.wait_state(job_id, job_pb2.JOB_STATE_SUCCEEDED, timeout=30)
    assert job.attempt == 1
    assert job.result.content_type == "application/json"
    result = json.loads(job.result.data)
    received = server.mailbox.only()
    message = received.message
    assert message["Message-ID"] == result["message_id"]
    assert message["From"] == "Jobwire <jobs@example.com>"
    assert message["To"] == "Ann <ann@example.com>, nobody@example.com"
    assert message["Subject"] == "Job e2e"
    assert message.get_content() == "Sent by a worker.\n"
    assert received.rcpt_tos == ["ann@example.com"]
    assert result["accepted"] == ["ann@example.com"]
    assert [r["address"] for r in result["refused"]] == ["nobody@example.com"]


def test_refused_recipient_fails_the_job_without_a_retry(
    scheduler: Any, jobs: Jobs, server: SmtpServer
) -> None:
    with running_worker(scheduler.target, server.settings()):
        job_id = jobs.submit("email", {**MESSAGE, "to": "nobody@example.com"}, max_attempts=3)
        job = jobs.wait_state(job_id, job_pb2.JOB_STATE_FAILED, timeout=30)
    assert job.attempt == 1
    assert len(job.attempts) == 1
    assert job.error.kind == "recipient_refused"
    assert "550" in job.error.message
    assert server.mailbox.received == []


def test_invalid_payload_fails_the_job_without_a_retry(
    scheduler: Any, jobs: Jobs, server: SmtpServer
) -> None:
    with running_worker(scheduler.target, server.settings()):
        job_id = jobs.submit(
            "email", {**MESSAGE, "subject": "Hi\r\nBcc: x@example.com"}, max_attempts=3
        )
        job = jobs.wait_state(job_id, job_pb2.JOB_STATE_FAILED, timeout=30)
    assert job.attempt == 1
    assert job.error.kind == "invalid_payload"


def test_job_is_retried_while_the_server_is_down_and_sent_once_it_is_back(
    scheduler: Any, jobs: Jobs
) -> None:
    down = SmtpServer()  # its port, with nothing listening yet
    backoff = job_pb2.BackoffPolicy(initial=Duration(seconds=2), multiplier=1.0, jitter=0.0)
    with running_worker(scheduler.target, down.settings()):
        job_id = jobs.submit("email", MESSAGE, max_attempts=5, backoff=backoff)
        first = jobs.wait(
            job_id,
            lambda job: len(job.attempts) >= 1 and job.attempts[0].HasField("finished_at"),
            "to end its first attempt",
        )
        assert first.attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_FAILED
        assert first.attempts[0].error.kind == "smtp_unavailable"
        assert first.state in (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING)
        down.start()
        try:
            job = jobs.wait_state(job_id, job_pb2.JOB_STATE_SUCCEEDED, timeout=30)
        finally:
            down.stop()
    assert job.attempt >= 2
    assert all(a.error.kind == "smtp_unavailable" for a in job.attempts[:-1])
    assert json.loads(job.result.data)["message_id"] == down.mailbox.only().message["Message-ID"]
