"""End-to-end tier: real servers started by session fixtures on loopback ports."""

from tests.e2e.kbs_servers import (  # noqa: F401 - fixtures
    cdh,
    dev_kbs,
    dev_kbs_tls,
    hostile_kbs,
)
from tests.e2e.stores_servers import (  # noqa: F401 - fixtures
    fault_proxy,
    nginx,
    nginx_tls,
    proxy,
    registry,
    s3_server,
    s3_tls_server,
    secure_registry,
    token_registry,
)
