"""Hypothesis strategies for jobwire's protobuf inputs, and the contract they are judged by.

The strategies produce well-formed, boundary and malformed values on purpose; the `*_ok`
functions classify a value by the rules written in `protos/jobwire/v1/*.proto` (and the
limits the scheduler documents), independently of the scheduler's own validation code.
"""

from __future__ import annotations

import re
import string
import uuid
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st
from jobwire.v1 import job_pb2, jobs_pb2

# -- the contract ----------------------------------------------------------------------------

MIB = 1024 * 1024
PAYLOAD_LIMIT = MIB
MAX_BATCH = 1000
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# google.protobuf.Duration: +-10000 years; Timestamp: 0001-01-01 to 9999-12-31.
DURATION_MAX_SECONDS = 315_576_000_000
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799

NAME_CHARS = string.ascii_letters + string.digits + "_.:-"
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Other common spellings of a UUID (braces, urn:uuid:, no hyphens): accepting them is harmless,
# so a request with one may be answered either way.
_UUID_SPELLINGS = re.compile(
    r"(urn:uuid:)?\{?([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
    r"[0-9a-fA-F]{12})\}?"
)


def name_ok(value: str) -> bool:
    """Queue, type and worker names: 1-128 characters of [A-Za-z0-9_.:-], nothing else."""
    return _NAME.fullmatch(value) is not None


def text_ok(value: str, limit: int) -> bool:
    """Free text stored by the scheduler: bounded, and no NUL (PostgreSQL text cannot hold it)."""
    return len(value) <= limit and "\x00" not in value


class IdForm(Enum):
    CANONICAL = "canonical"
    SPELLING = "spelling"  # a UUID in another common spelling: either answer is acceptable
    MALFORMED = "malformed"


def id_form(value: str) -> tuple[IdForm, uuid.UUID | None]:
    if _CANONICAL_UUID.fullmatch(value):
        return IdForm.CANONICAL, uuid.UUID(value)
    match = _UUID_SPELLINGS.fullmatch(value)
    if match and (value.startswith("{") == value.endswith("}")):
        return IdForm.SPELLING, uuid.UUID(match.group(2).replace("-", ""))
    return IdForm.MALFORMED, None


def duration_nanos(value: Duration) -> int | None:
    """Total nanoseconds of a Duration, or None if it is not a valid Duration at all."""
    s, n = value.seconds, value.nanos
    if not -999_999_999 <= n <= 999_999_999:
        return None
    if (s > 0 and n < 0) or (s < 0 and n > 0):
        return None
    if abs(s) > DURATION_MAX_SECONDS:
        return None
    return s * 1_000_000_000 + n


def duration_ok(value: Duration, low: timedelta, high: timedelta) -> bool:
    total = duration_nanos(value)
    if total is None:
        return False
    return _nanos(low) <= total <= _nanos(high)


def _nanos(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def timestamp_valid(value: Timestamp) -> bool:
    return (
        0 <= value.nanos <= 999_999_999
        and TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS
    )


# -- values ----------------------------------------------------------------------------------

EDGE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "a\n",
    "queue\n",
    "\r\n",
    "\t",
    "é",
    "ß" * 3,
    "\u202e",
    "\ufeff",
    "😀",
    "%s%n",
    "'; DROP TABLE jobwire_jobs; --",
    "../../etc/passwd",
    "default",
    "a" * 128,
    "a" * 129,
    "a" * 256,
    "a" * 257,
    "a" * 1024,
    "a" * 1025,
    "a" * 4096,
    "a" * 4097,
]


def weighted(*branches: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Like st.one_of, but each branch is picked with the given weight (one_of flattens nested
    one_ofs, so a branch made of many alternatives would crowd out the others)."""
    picks = [i for i, (weight, _) in enumerate(branches) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda i: branches[i][1])


def long_text() -> st.SearchStrategy[str]:
    """Very long strings, built by repetition so that generation stays cheap."""
    return st.builds(
        lambda unit, count: unit * count,
        st.sampled_from(["a", "é", "😀", "-", "\x00", "ab\n"]),
        st.sampled_from([63, 64, 65, 127, 128, 129, 255, 256, 257, 1025, 4097, 65537, 200_000]),
    )


def any_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(EDGE_TEXT),
        st.text(max_size=24),
        st.text(alphabet=NAME_CHARS + "\x00\n /é😀\u0301", max_size=140),
        long_text(),
    )


def valid_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet=NAME_CHARS, min_size=1, max_size=16),
        st.sampled_from(["a", "-", ".", ":", "_", "a" * 128, "Z9_.:-" * 21 + "Z9"]),
    )


def names() -> st.SearchStrategy[str]:
    """Queue, type and worker names: valid ones often, malformed ones as often."""
    return st.one_of(valid_names(), any_text())


def int32(*edges: int) -> st.SearchStrategy[int]:
    lo, hi = INT32
    extra = [e for e in edges if lo <= e <= hi]
    return st.one_of(
        st.sampled_from([lo, lo + 1, -1, 0, 1, hi - 1, hi, *extra]),
        st.integers(lo, hi),
        st.integers(-5, 5),
    )


def int64(*edges: int) -> st.SearchStrategy[int]:
    lo, hi = INT64
    extra = [e for e in edges if lo <= e <= hi]
    return st.one_of(
        st.sampled_from([lo, lo + 1, -1, 0, 1, hi - 1, hi, *extra]),
        st.integers(lo, hi),
    )


NANOS_EDGES = [0, 1, 500_000_000, 999_999_999, 1_000_000_000, -1, -999_999_999, -1_000_000_000]


def nanos() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([*NANOS_EDGES, *INT32]), st.integers(*INT32))


def durations(*edge_seconds: int) -> st.SearchStrategy[Duration | None]:
    """Unset, or any Duration: in range, at the field's edges, negative, huge or malformed."""
    seconds = st.one_of(
        st.sampled_from(
            [
                0,
                1,
                -1,
                3600,
                86400,
                7 * 86400,
                DURATION_MAX_SECONDS,
                DURATION_MAX_SECONDS + 1,
                -DURATION_MAX_SECONDS,
                *edge_seconds,
            ]
        ),
        st.integers(-10, 8 * 86400),
        int64(),
    )
    # A nanosecond either side of each edge (finer than a timedelta can hold).
    near_edges = [
        Duration(seconds=s, nanos=n)
        for edge in (0, 1, *edge_seconds)
        for s, n in ((edge, 1), (edge - 1, 999_999_999), (edge, 0))
        if s >= 0
    ] + [Duration(nanos=-1), Duration(seconds=-1, nanos=-999_999_999)]
    return st.one_of(
        st.none(),
        st.sampled_from(near_edges),
        st.builds(lambda s, n: Duration(seconds=s, nanos=n), seconds, st.sampled_from([0, 0, 1])),
        st.builds(lambda s, n: Duration(seconds=s, nanos=n), seconds, nanos()),
    )


def timestamps(now: datetime) -> st.SearchStrategy[Timestamp | None]:
    """Unset, past, soon, far ahead, at the Timestamp range's edges, or malformed."""
    epoch = int(now.timestamp())
    year = 365 * 86400
    seconds = st.one_of(
        st.integers(TIMESTAMP_MIN_SECONDS, epoch),  # the past, back to year 1
        st.integers(epoch, epoch + 300 * 86400),  # within the year ahead
        st.integers(epoch + 400 * 86400, TIMESTAMP_MAX_SECONDS),  # too far ahead
        st.sampled_from(
            [
                TIMESTAMP_MIN_SECONDS,
                TIMESTAMP_MIN_SECONDS - 1,
                TIMESTAMP_MAX_SECONDS,
                TIMESTAMP_MAX_SECONDS + 1,
                0,
                -1,
                epoch + 2 * year,
            ]
        ),
        int64(),
    )
    return st.one_of(
        st.none(),
        st.builds(lambda s: Timestamp(seconds=s), seconds),
        st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), seconds, nanos()),
    )


def doubles(*edges: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(
            [
                0.0,
                -0.0,
                1.0,
                1e-300,
                5e-324,
                -1.0,
                float("nan"),
                float("inf"),
                float("-inf"),
                *edges,
            ]
        ),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(-1.0, 12.0),
    )


def payload_sizes() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, PAYLOAD_LIMIT - 1, PAYLOAD_LIMIT, PAYLOAD_LIMIT + 1, 3 * MIB]),
        st.integers(0, 64),
    )


def payload_bytes() -> st.SearchStrategy[bytes]:
    """Random short payloads, or large ones up to and over the 1 MiB limit (cheap to build)."""
    return st.one_of(
        st.binary(max_size=32),
        st.builds(lambda size, fill: bytes([fill]) * size, payload_sizes(), st.integers(0, 255)),
    )


def canonical_ids() -> st.SearchStrategy[str]:
    return st.builds(
        lambda n, upper: (
            str(uuid.UUID(int=n, version=4)).upper() if upper else str(uuid.UUID(int=n, version=4))
        ),
        st.integers(0, 2**128 - 1),
        st.booleans(),
    )


def uuid_spellings() -> st.SearchStrategy[str]:
    def spell(n: int, form: int) -> str:
        u = uuid.UUID(int=n, version=4)
        return [u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u), u.hex.upper()][form]

    return st.builds(spell, st.integers(0, 2**128 - 1), st.integers(0, 3))


def perturbed_ids() -> st.SearchStrategy[str]:
    """Almost-UUIDs: one character replaced, dropped or added (digits of other scripts,
    whitespace, signs, NUL, a stray hyphen)."""

    def perturb(n: int, position: int, how: int, char: str) -> str:
        text = str(uuid.UUID(int=n, version=4))
        position %= len(text)
        if how == 0:
            return text[:position] + char + text[position + 1 :]
        if how == 1:
            return text[:position] + text[position + 1 :]
        return text[:position] + char + text[position:]

    return st.builds(
        perturb,
        st.integers(0, 2**128 - 1),
        st.integers(0, 40),
        st.integers(0, 2),
        st.sampled_from(["g", " ", "\x00", "\n", "-", "+", "_", "\u0663", "\uff19", "é", "{", "}"]),
    )


def malformed_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        any_text(),
        perturbed_ids(),
        st.sampled_from(
            [
                "",
                "0",
                "null",
                "00000000-0000-0000-0000-00000000000",
                "00000000-0000-0000-0000-0000000000000",
                "00000000-0000-0000-0000-00000000000g",
                " 00000000-0000-0000-0000-000000000000",
                "00000000-0000-0000-0000-000000000000\n",
            ]
        ),
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


# -- whole messages ---------------------------------------------------------------------------


def spec_ok(spec: job_pb2.JobSpec, now: datetime) -> bool:
    """A JobSpec as `job.proto` describes it (plus: stored text holds no NUL)."""
    checks = [
        spec.queue == "" or name_ok(spec.queue),
        name_ok(spec.type),
        len(spec.payload.data) <= PAYLOAD_LIMIT,
        text_ok(spec.payload.content_type, 256),
        -1000 <= spec.priority <= 1000,
        spec.max_attempts == 0 or 1 <= spec.max_attempts <= 100,
        text_ok(spec.idempotency_key, 256),
        len(spec.labels) <= 32,
        all(
            0 < len(k) <= 64 and text_ok(k, 64) and text_ok(v, 256) for k, v in spec.labels.items()
        ),
    ]
    if spec.HasField("run_at"):
        checks.append(
            timestamp_valid(spec.run_at)
            and spec.run_at.ToDatetime(tzinfo=UTC) <= now + timedelta(days=365)
        )
    if spec.HasField("backoff"):
        b = spec.backoff
        multiplier = b.multiplier or 2.0
        checks += [
            not b.HasField("initial") or duration_ok(b.initial, timedelta(0), timedelta(days=1)),
            not b.HasField("max") or duration_ok(b.max, timedelta(0), timedelta(days=7)),
            1.0 <= multiplier <= 10.0,
            0.0 <= b.jitter <= 1.0,
        ]
    if spec.HasField("lease_timeout"):
        checks.append(duration_ok(spec.lease_timeout, timedelta(seconds=1), timedelta(hours=1)))
    if spec.HasField("execution_timeout"):
        checks.append(duration_ok(spec.execution_timeout, timedelta(0), timedelta(hours=24)))
    return all(checks)


def short_text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(EDGE_TEXT[:18]), st.text(max_size=12))


def _valid_durations(low: int, high: int) -> st.SearchStrategy[Duration | None]:
    return st.one_of(
        st.none(),
        st.builds(lambda s: Duration(seconds=s), st.integers(low, high)),
    )


def _labels_any() -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.dictionaries(short_text(), short_text(), max_size=3),
        st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([32, 33, 100])),
        st.builds(
            lambda k, v: {k: v},
            st.sampled_from(["k" * 64, "k" * 65, "", "\x00", "é" * 64]),
            st.sampled_from(["v" * 256, "v" * 257, "", "\x00", "😀" * 256]),
        ),
    )


def job_specs(now: datetime, *, small: bool = False) -> st.SearchStrategy[job_pb2.JobSpec]:
    """JobSpecs that are valid but for a few fields, which get any value at all."""
    valid: dict[str, st.SearchStrategy[Any]] = {
        "queue": st.one_of(st.just(""), valid_names()),
        "type": valid_names(),
        "payload": st.builds(
            lambda d, c: job_pb2.Payload(data=d, content_type=c),
            st.binary(max_size=16),
            st.sampled_from(["", "application/json", "text/plain; charset=é"]),
        ),
        "priority": st.integers(-1000, 1000),
        "run_at": st.one_of(
            st.none(),
            st.builds(lambda s: Timestamp(seconds=s), st.integers(0, int(now.timestamp()))),
        ),
        "max_attempts": st.integers(0, 100),
        "backoff": st.one_of(
            st.none(),
            st.builds(
                lambda i, m, x, j: job_pb2.BackoffPolicy(initial=i, max=m, multiplier=x, jitter=j),
                _valid_durations(0, 86400),
                _valid_durations(0, 7 * 86400),
                st.one_of(st.just(0.0), st.floats(1.0, 10.0)),
                st.floats(0.0, 1.0),
            ),
        ),
        "lease_timeout": _valid_durations(1, 3600),
        "execution_timeout": _valid_durations(0, 86400),
        "idempotency_key": st.one_of(st.just(""), st.text(max_size=8)).filter(
            lambda k: "\x00" not in k
        ),
        "labels": st.dictionaries(
            st.text(alphabet=NAME_CHARS, min_size=1, max_size=8),
            st.text(max_size=8).filter(lambda v: "\x00" not in v),
            max_size=3,
        ),
    }
    anything: dict[str, st.SearchStrategy[Any]] = {
        "queue": names(),
        "type": names(),
        "payload": st.one_of(
            st.none(),
            st.builds(
                lambda d, c: job_pb2.Payload(data=d, content_type=c),
                payload_bytes(),
                any_text(),
            ),
        ),
        "priority": int32(-1000, 1000, -1001, 1001),
        "run_at": timestamps(now),
        "max_attempts": int32(100, 101),
        "backoff": st.one_of(
            st.none(),
            st.builds(
                lambda i, m, x, j: job_pb2.BackoffPolicy(initial=i, max=m, multiplier=x, jitter=j),
                durations(86400, 86401),
                durations(7 * 86400, 7 * 86400 + 1),
                doubles(10.0, 10.000001, 0.999999, 2.0),
                doubles(0.2, 1.0000001),
            ),
        ),
        "lease_timeout": durations(3600, 3601),
        "execution_timeout": durations(86400, 86401),
        "idempotency_key": st.one_of(any_text(), st.sampled_from(["k", "k" * 256, "k" * 257])),
        "labels": _labels_any(),
    }
    if small:  # for requests that repeat one spec a thousand times: no long strings
        short_names = st.one_of(valid_names(), st.sampled_from(EDGE_TEXT[:18]))
        anything["queue"] = short_names
        anything["type"] = short_names
        anything["payload"] = valid["payload"]
        anything["idempotency_key"] = st.sampled_from(["", "k", "\x00", "k" * 257])
        anything["labels"] = valid["labels"]

    @st.composite
    def build(draw: st.DrawFn) -> job_pb2.JobSpec:
        fuzzed = draw(st.sets(st.sampled_from(sorted(valid)), max_size=3))
        fields = {
            name: draw(anything[name] if name in fuzzed else valid[name]) for name in sorted(valid)
        }
        spec = job_pb2.JobSpec(
            **{k: v for k, v in fields.items() if v is not None and k != "labels"}
        )
        spec.labels.update(fields["labels"])
        return spec

    return build()


def submit_requests(now: datetime) -> st.SearchStrategy[jobs_pb2.SubmitRequest]:
    return st.one_of(
        st.builds(
            lambda specs: jobs_pb2.SubmitRequest(jobs=specs),
            st.lists(job_specs(now), min_size=0, max_size=3),
        ),
        st.builds(
            lambda spec, n: jobs_pb2.SubmitRequest(jobs=[spec] * n),
            job_specs(now, small=True),
            st.sampled_from([MAX_BATCH, MAX_BATCH + 1]),
        ),
    )
