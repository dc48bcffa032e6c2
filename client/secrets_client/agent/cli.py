"""secrets-sync: a project's secrets as files in a directory, kept current from the event topic.

    SECRETS_API_KEY=sk-lw-... secrets-sync --url http://secrets:8000 --dir /run/secrets

Kafka comes from the service's variables (KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC,
KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*). Exit status: 0 after SIGTERM or
SIGINT, 2 for a configuration error (including an API key the service refuses). The API key
(SECRETS_API_KEY) and the SASL password may instead come from files: SECRETS_API_KEY_FILE,
KAFKA_SASL_PASSWORD_FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from secrets_client.agent.files import SecretFiles
from secrets_client.agent.sync import AgentConfigurationError, SyncAgent
from secrets_client.client import SecretsClient
from secrets_client.kafka import KafkaSettings, KafkaSettingsError, secret_setting

logger = logging.getLogger("secrets_client.agent")

# Value reads in flight at once, each on a connection of its own.
READ_CONCURRENCY = 8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secrets-sync", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=os.environ.get("SECRETS_URL"), help="the service (default: $SECRETS_URL)"
    )
    parser.add_argument(
        "--dir", type=Path, required=True, help="where DIR/NAME files are written (made 0700)"
    )
    parser.add_argument(
        "--env-file", type=Path, default=None, help="also write every secret as NAME='value' here"
    )
    parser.add_argument(
        "--on-change",
        default=None,
        metavar="CMD",
        help="shell command run after each batch of changes (SECRETS_CHANGED lists the names)",
    )
    parser.add_argument("--on-change-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=300.0,
        help="full resync interval, to heal anything missed (300)",
    )
    parser.add_argument("--once", action="store_true", help="one full sync (and DIR/.ready), then exit")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO").upper())
    return parser


class RepeatFilter(logging.Filter):
    """One line per message template per `seconds` from a library's loggers: a broker outage makes aiokafka
    log the same connection error ten times a second."""

    def __init__(self, prefix: str, seconds: float) -> None:
        super().__init__()
        self.prefix = prefix
        self.seconds = seconds
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        self._last[key] = now
        return True


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Never below INFO for the libraries, whatever --log-level says: aiokafka's DEBUG lines dump raw
    # requests (a SASL PLAIN exchange carries the password), and httpx's request lines add nothing.
    root = logging.getLogger().level
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter("aiokafka", 30.0))
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, root))
    logging.getLogger("httpcore").setLevel(max(logging.INFO, root))
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root))
    problems = []
    try:
        api_key = (secret_setting(os.environ, "SECRETS_API_KEY") or "").strip()
    except KafkaSettingsError as exc:
        problems.append(str(exc))
        api_key = "unusable"
    if not args.url:
        problems.append("--url (or SECRETS_URL) is required")
    if not api_key:
        problems.append("SECRETS_API_KEY (or SECRETS_API_KEY_FILE) is required (a key holding secrets:read)")
    if args.resync_seconds <= 0:
        problems.append("--resync-seconds must be positive")
    try:
        kafka = KafkaSettings.from_env()
    except KafkaSettingsError as exc:
        problems.append(str(exc))
    if problems:
        for problem in problems:
            print(f"secrets-sync: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, api_key, kafka))
    except AgentConfigurationError as exc:
        print(f"secrets-sync: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, api_key: str, kafka: KafkaSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    files = SecretFiles(args.dir, args.env_file)
    async with SecretsClient(
        args.url, api_key, total_timeout=30.0, max_connections=READ_CONCURRENCY
    ) as client:
        agent = SyncAgent(
            client,
            files,
            kafka,
            resync_seconds=args.resync_seconds,
            on_change=args.on_change,
            on_change_timeout=args.on_change_timeout,
            read_concurrency=READ_CONCURRENCY,
        )
        if args.once:
            files.clear_ready()
            await agent.full_sync()
            files.mark_ready()
            return 0
        await agent.run(stop)
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
