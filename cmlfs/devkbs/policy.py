"""dev-kbs resource policy: a small JSON stand-in for Trustee's Rego resource policies.

    {"default": "deny",
     "rules": [{"effect": "allow", "tee": ["sample"], "resource": "default/*/*"}]}

Rules are tried in order; the first whose ``tee`` (a name, a list of names, or
``"*"``), ``resource`` (an fnmatch glob over ``repo/type/tag``, where ``*``
also matches ``/``) and optional ``peer`` (``"loopback"``, ``"remote"`` or
``"any"``, the default: where the resource request comes from) all match
decides; otherwise ``default`` decides. Trustee cannot run here (OPA/Rego), so
dev-kbs accepts this format on the same endpoint, base64url-encoded the same way.

``DEFAULT_POLICY`` (no policy given) is Trustee's default policy
(trustee kbs/sample_policies/default.rego: release unless the evidence is
``sample``) relaxed for loopback only, where the development loop runs:
``sample`` evidence gets resources only when the request comes from loopback.
"""

from dataclasses import dataclass
from fnmatch import fnmatchcase

from cmlfs.errors import CmlfsError
from cmlfs.format.strictjson import loads_strict

MAX_POLICY_LEN = 64 * 1024
MAX_RULES = 1000
_EFFECTS = ("allow", "deny")
_PEERS = ("any", "loopback", "remote")


class PolicyError(CmlfsError):
    """A policy document that does not follow the dev-kbs policy format."""


@dataclass(frozen=True)
class Rule:
    effect: str
    tees: tuple[str, ...]
    resource: str
    peer: str = "any"

    def matches(self, tee: str, path: str, loopback: bool) -> bool:
        return (
            ("*" in self.tees or tee in self.tees)
            and fnmatchcase(path, self.resource)
            and self.peer in ("any", "loopback" if loopback else "remote")
        )


@dataclass(frozen=True)
class Policy:
    default: str
    rules: tuple[Rule, ...] = ()

    def allows(self, tee: str, path: str, loopback: bool) -> bool:
        """Whether a ``tee`` guest may have ``path``, asked from a loopback peer or not."""
        for rule in self.rules:
            if rule.matches(tee, path, loopback):
                return rule.effect == "allow"
        return self.default == "allow"


DEFAULT_POLICY = Policy("allow", (Rule("deny", ("sample",), "*", peer="remote"),))


def parse_policy(data: bytes) -> Policy:
    if len(data) > MAX_POLICY_LEN:
        raise PolicyError(f"policy is larger than {MAX_POLICY_LEN} bytes")
    doc = loads_strict(data, "policy", PolicyError)
    if not isinstance(doc, dict) or not set(doc) <= {"default", "rules"} or "default" not in doc:
        raise PolicyError('policy must be an object with "default" and optional "rules"')
    if doc["default"] not in _EFFECTS:
        raise PolicyError('policy "default" must be "allow" or "deny"')
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or len(raw_rules) > MAX_RULES:
        raise PolicyError(f'policy "rules" must be a list of at most {MAX_RULES} rules')
    return Policy(doc["default"], tuple(_parse_rule(r) for r in raw_rules))


def _parse_rule(raw: object) -> Rule:
    if not isinstance(raw, dict) or not {"effect", "tee", "resource"} <= set(raw) <= {
        "effect",
        "tee",
        "resource",
        "peer",
    }:
        raise PolicyError('each rule has "effect", "tee", "resource" and optionally "peer"')
    if raw["effect"] not in _EFFECTS:
        raise PolicyError('rule "effect" must be "allow" or "deny"')
    tees = raw["tee"] if isinstance(raw["tee"], list) else [raw["tee"]]
    if not tees or not all(isinstance(t, str) and t for t in tees):
        raise PolicyError('rule "tee" must be a TEE name, a list of names, or "*"')
    if not isinstance(raw["resource"], str) or not raw["resource"]:
        raise PolicyError('rule "resource" must be a glob over repo/type/tag')
    peer = raw.get("peer", "any")
    if peer not in _PEERS:
        raise PolicyError('rule "peer" must be "loopback", "remote" or "any"')
    return Rule(raw["effect"], tuple(tees), raw["resource"], peer)
