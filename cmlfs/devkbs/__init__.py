"""dev-kbs: a development key broker speaking Trustee's KBS protocol "0.4.0".

For tests and demos only (``cmlfs dev-kbs``): it verifies only ``sample``
evidence, keeps resources in clear on its disk, and applies a small JSON
resource policy instead of Rego. Never run it as a production key broker.
"""

from cmlfs.devkbs.policy import ALLOW_ALL, Policy, PolicyError, parse_policy
from cmlfs.devkbs.server import (
    BANNER,
    DevKbs,
    DevKbsConfig,
    DevKbsError,
    load_policy_file,
    parse_listen,
)

__all__ = [
    "ALLOW_ALL",
    "BANNER",
    "DevKbs",
    "DevKbsConfig",
    "DevKbsError",
    "Policy",
    "PolicyError",
    "load_policy_file",
    "parse_listen",
    "parse_policy",
]
