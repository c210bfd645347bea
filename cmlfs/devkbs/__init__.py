"""dev-kbs: a development key broker speaking Trustee's KBS protocol "0.4.0".

For tests and demos only (``cmlfs dev-kbs``): it verifies ``sample`` evidence
(which proves nothing) and Azure vTPM evidence (against vendor roots given by
option), keeps resources in clear on its disk, and applies a small JSON
resource policy instead of Rego. It parses and refuses bodies as Trustee does
(``protocol``). Never run it as a production key broker: it listens on
loopback unless told otherwise.
"""

from cmlfs.devkbs.policy import DEFAULT_POLICY, Policy, PolicyError, parse_policy
from cmlfs.devkbs.server import (
    BANNER,
    LISTEN_ANYWHERE_OPTION,
    DevKbs,
    DevKbsConfig,
    DevKbsError,
    load_policy_file,
    parse_listen,
)

__all__ = [
    "BANNER",
    "DEFAULT_POLICY",
    "LISTEN_ANYWHERE_OPTION",
    "DevKbs",
    "DevKbsConfig",
    "DevKbsError",
    "Policy",
    "PolicyError",
    "load_policy_file",
    "parse_listen",
    "parse_policy",
]
