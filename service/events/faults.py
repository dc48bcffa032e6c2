"""Why Kafka turned us away, in words an operator can act on; and aiokafka's log, kept quiet.

aiokafka's `start()` raises only "Unable to bootstrap" with no cause. The real one (a
failed SASL handshake, an untrusted certificate, a refused connection) is an argument of
an ERROR record of the `aiokafka` logger. `KafkaLogWatch`, a handler on that logger,
keeps the latest such fault for whoever asks (`fault_since`), and keeps aiokafka from
flooding the log while a broker is away (it logs every reconnection attempt, ~100 a
second): connection faults are reported by the code that uses Kafka (the relay logs an
outage once, then every 30 s; `report_with` makes the watch report them itself, for
the commands that have no relay), and aiokafka's other messages pass at most once per
30 s each. At LOG_LEVEL=DEBUG everything passes.

Only public APIs: the exceptions' own types and attributes (`verify_code`,
`verify_message`, `reason`: OpenSSL's words), and the records' arguments. A cause
never quotes an exception's message, so it cannot carry a secret.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass

from aiokafka import errors

from service.events.kafka import KafkaConnection

logger = logging.getLogger("service.events.kafka")

REPEAT_SECONDS = 30.0

# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code carries them.
_UNTRUSTED = {2, 18, 19, 20, 21, 27}  # no issuer, self-signed (leaf or in chain), unknown local issuer
_EXPIRED = {9, 10}  # not yet valid, expired
_NAME_MISMATCH = {62, 64}  # host name, IP address
# OpenSSL alert reasons when the broker rejects our (missing or unknown) client certificate.
_CLIENT_CERT_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
}


class KafkaFailure(Exception):
    """A Kafka client call failed; the message is its cause in words safe to log (never a secret)."""


# How much a fault says about the cause, so the most telling one wins.
NOT_A_FAULT, SYMPTOM, NETWORK, CONFIGURATION = 0, 1, 2, 3


def severity(exc: BaseException) -> int:
    """NOT_A_FAULT: not about reaching Kafka; SYMPTOM: a timeout, a node not ready; NETWORK: a refused
    or dropped connection; CONFIGURATION: credentials, TLS, a mechanism the broker does not take."""
    if isinstance(
        exc,
        errors.SaslAuthenticationFailed
        | errors.AuthenticationFailedError
        | errors.UnsupportedSaslMechanismError
        | errors.AuthenticationMethodNotSupported
        | errors.TopicAuthorizationFailedError
        | errors.ClusterAuthorizationFailedError
        | ssl.SSLError,
    ):
        return CONFIGURATION
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return NETWORK
    if _closed_by_broker(exc):
        return NETWORK
    if isinstance(
        exc,
        TimeoutError
        | errors.KafkaConnectionError
        | errors.NodeNotReadyError
        | errors.KafkaTimeoutError
        | errors.RequestTimedOutError
        | errors.NotEnoughReplicasError
        | errors.NotEnoughReplicasAfterAppendError
        | errors.NotLeaderForPartitionError
        | errors.LeaderNotAvailableError,
    ):
        return SYMPTOM
    return NOT_A_FAULT


def _closed_by_broker(exc: BaseException) -> bool:
    """aiokafka's "Connection at host:port closed": the broker hung up (its one class covers many faults)."""
    return (
        isinstance(exc, errors.KafkaConnectionError)
        and bool(exc.args)
        and str(exc.args[0]).endswith(" closed")
    )


def cause(exc: BaseException, connection: KafkaConnection, where: str | None = None) -> str:
    """What `exc` means for the operator of `connection`; never quotes a secret (nor the exception's text)."""
    at = where or connection.bootstrap_servers

    def unreachable(detail: str | None = None) -> str:
        # A bootstrap address that does not answer may be a wrong one; a cluster node that is down is not.
        notes = [
            note
            for note in (detail, None if at.startswith("node ") else "check KAFKA_BOOTSTRAP_SERVERS")
            if note
        ]
        return f"Kafka broker unreachable at {at}" + (f" ({'; '.join(notes)})" if notes else "")

    if isinstance(exc, errors.SaslAuthenticationFailed | errors.AuthenticationFailedError):
        return (
            f"Kafka authentication failed (SASL {connection.sasl_mechanism} for user "
            f"{connection.sasl_username}; check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
        )
    if isinstance(exc, errors.UnsupportedSaslMechanismError | errors.AuthenticationMethodNotSupported):
        return f"Kafka broker does not accept SASL {connection.sasl_mechanism} (check KAFKA_SASL_MECHANISM)"
    if isinstance(exc, errors.TopicAuthorizationFailedError | errors.ClusterAuthorizationFailedError):
        return f"Kafka denied user {connection.sasl_username} access to the topic (check the broker's ACLs)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _NAME_MISMATCH:
            detail = exc.verify_message.removeprefix("Hostname mismatch, ").removeprefix(
                "IP address mismatch, "
            )
            return (
                f"Kafka TLS host name mismatch ({detail.rstrip('.')}; "
                "connect by a name or address the broker's certificate holds)"
            )
        if code in _UNTRUSTED:
            return "Kafka TLS certificate not trusted (check KAFKA_SSL_CAFILE)"
        if code in _EXPIRED:
            return f"Kafka TLS certificate not valid now ({exc.verify_message.rstrip('.')})"
        return f"Kafka TLS certificate rejected (verify code {code}; check KAFKA_SSL_CAFILE)"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        if reason in _CLIENT_CERT_REFUSED:
            return f"Kafka refused the client certificate ({reason}; check KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE)"
        return f"Kafka TLS handshake failed at {at} ({reason}; does the listener speak TLS? check KAFKA_SECURITY_PROTOCOL)"
    if isinstance(exc, ConnectionRefusedError):
        return unreachable("connection refused")
    if isinstance(exc, ConnectionResetError):
        return (
            f"Kafka broker at {at} reset the connection (if it persists, check KAFKA_SECURITY_PROTOCOL: "
            "a plaintext listener drops a TLS client)"
        )
    if _closed_by_broker(exc):
        return (
            f"Kafka broker at {at} closed the connection (if it persists, check KAFKA_SECURITY_PROTOCOL: "
            "a TLS or SASL listener drops a client that does not speak it)"
        )
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return unreachable(type(exc).__name__)
    if isinstance(exc, errors.NotEnoughReplicasError | errors.NotEnoughReplicasAfterAppendError):
        return "Kafka has too few in-sync replicas for the topic (acks=all)"
    if isinstance(exc, errors.NotLeaderForPartitionError | errors.LeaderNotAvailableError):
        return "Kafka partition leader unavailable (a broker is down or a leader election is under way)"
    if isinstance(exc, errors.KafkaConnectionError | errors.NodeNotReadyError):
        return unreachable()
    if isinstance(exc, TimeoutError | errors.KafkaTimeoutError | errors.RequestTimedOutError):
        return f"Kafka did not answer within KAFKA_TIMEOUT_SECONDS ({connection.timeout_seconds:g}s)"
    return f"Kafka client error ({type(exc).__name__})"


def explain(exc: BaseException, connection: KafkaConnection, since: float) -> str:
    """The most telling cause of a failed call that began at `since` (time.monotonic()): what aiokafka
    logged meanwhile (its `start()` raises only "Unable to bootstrap"), or else what it raised."""
    fault = kafka_log_watch().fault_since(since)
    if fault is not None and severity(fault.exc) >= severity(exc):
        return cause(fault.exc, connection, fault.where)
    return cause(exc, connection)


@dataclass(frozen=True)
class Fault:
    exc: BaseException
    where: str | None
    at: float  # time.monotonic() when it was logged


def _fault_of(record: logging.LogRecord) -> Fault | None:
    """The connection fault a record of aiokafka's reports, if any (an exception among its arguments)."""
    args = record.args if isinstance(record.args, tuple) else ()
    candidates = [a for a in args if isinstance(a, BaseException)]
    if record.exc_info and record.exc_info[1] is not None:
        candidates.append(record.exc_info[1])
    faults = [exc for exc in candidates if severity(exc) > NOT_A_FAULT]
    if not faults:
        return None
    where = None
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], int):
        where = f"{args[0]}:{args[1]}"  # 'Unable connect to "%s:%s": %s'
    elif len(args) >= 2 and isinstance(args[0], int):
        where = f"node {args[0]}"  # 'Unable connect to node with id %s: %s'
    return Fault(faults[0], where, time.monotonic())


class KafkaLogWatch(logging.Handler):
    """The one handler of the `aiokafka` logger (which no longer propagates): see the module docstring."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._faults: dict[int, Fault] = {}  # severity -> the latest fault of that severity
        self._passed: dict[object, float] = {}  # (logger, message template) -> when
        self._reported: dict[object, float] = {}  # cause -> when
        self._report_connection: KafkaConnection | None = None
        self._state = threading.Lock()

    def report_with(self, connection: KafkaConnection | None) -> None:
        """Report connection faults here, at most once per cause per REPEAT_SECONDS (None: stay silent)."""
        self._report_connection = connection

    def fault_since(self, since: float) -> Fault | None:
        """The most telling connection fault aiokafka logged at or after `since` (time.monotonic())."""
        with self._state:
            recent = [fault for fault in self._faults.values() if fault.at >= since]
        if not recent:
            return None
        return max(recent, key=lambda fault: (severity(fault.exc), fault.at))

    def emit(self, record: logging.LogRecord) -> None:
        fault = _fault_of(record)
        if fault is not None:
            with self._state:
                self._faults[severity(fault.exc)] = fault
        if logging.getLogger("aiokafka").getEffectiveLevel() <= logging.DEBUG:
            self._forward(record)
        elif fault is not None:
            self._report(fault)
        elif self._first_in_a_while(self._passed, (record.name, str(record.msg))):
            self._forward(record)

    def _report(self, fault: Fault) -> None:
        connection = self._report_connection
        if connection is None:
            return
        text = cause(fault.exc, connection, fault.where)
        if self._first_in_a_while(self._reported, text):
            logger.warning(
                "Kafka connection failed: %s (repeats are logged at most every %.0fs)", text, REPEAT_SECONDS
            )

    def _first_in_a_while(self, seen: dict[object, float], key: object) -> bool:
        now = time.monotonic()
        with self._state:
            last = seen.get(key)
            if last is not None and now - last < REPEAT_SECONDS:
                return False
            seen[key] = now
            if len(seen) > 1000:
                seen.clear()
            return True

    @staticmethod
    def _forward(record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


_watch: KafkaLogWatch | None = None
_install = threading.Lock()


def kafka_log_watch() -> KafkaLogWatch:
    """The process's watch, installed on the `aiokafka` logger the first time it is asked for."""
    global _watch
    with _install:
        if _watch is None:
            _watch = KafkaLogWatch()
            aiokafka_logger = logging.getLogger("aiokafka")
            aiokafka_logger.addHandler(_watch)
            aiokafka_logger.propagate = False
        return _watch
