"""Hardening tier: the e2e store servers (nginx behind the fault proxy) for the fault tests."""

from tests.e2e.stores_servers import (  # noqa: F401 - fixtures
    fault_proxy,
    nginx,
    proxy,
)
