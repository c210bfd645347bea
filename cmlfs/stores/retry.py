"""Bounded retries with jittered exponential backoff, shared by the network stores.

Only failures marked transient (connection errors, timeouts, 5xx and 429
answers, short bodies) are retried. After the last attempt the failure becomes
a plain StoreError, which fails that one read with EIO and nothing else.
Never sleeps without bound and never retries a refusal (4xx) or a changed object.
"""

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cmlfs.errors import StoreError
from cmlfs.logfmt import quote
from cmlfs.stores.base import StoreStats

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransientStoreError(StoreError):
    """A failure that may succeed if the same request is sent again."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0
    stats: StoreStats = field(default_factory=StoreStats, compare=False)  # counts the retries

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): half fixed, half
        random, so many readers that failed together do not retry together."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """``operation()``, tried up to ``attempts`` times while it fails transiently.

        Every failure that leaves is prefixed with ``what`` and keeps its type,
        except that a transient one becomes a plain StoreError once attempts run out.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except TransientStoreError as exc:
                if attempt >= self.attempts:
                    raise StoreError(f"{what}: {exc} (gave up after {attempt} attempts)") from None
                self.stats.count_retry()
                log.info(
                    "event=store_retry what=%s attempt=%d reason=%s",
                    quote(what),
                    attempt,
                    quote(exc),
                )
                time.sleep(self.delay(attempt))
            except StoreError as exc:
                raise type(exc)(f"{what}: {exc}") from None
        raise AssertionError("unreachable: attempts must be at least 1")
