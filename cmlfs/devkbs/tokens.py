"""dev-kbs tokens: the attestation token it issues (ES256, ephemeral key) and admin tokens.

The attestation token is shaped like Trustee's EAR token: ``submods.cpu0``
holds the TEE's claims and ``runtime_data_claims`` with the ``tee-pubkey`` the
resource is later encrypted to. It is signed with a P-256 key made at start,
whose public JWK is also in the token header, as Trustee does without a
configured signer. Admin requests carry an EdDSA (Ed25519) JWT checked as
Trustee's ``bearer_jwt`` admin authentication does (trustee
kbs/src/admin/authentication/bearer_jwt.rs, kbs/src/crypto/jwt.rs): signature,
``exp`` required and not passed, ``iss`` and ``aud`` (a string or a list
holding it) when configured, and a string ``role`` claim.
"""

import json
import time
import uuid

from jwcrypto import jwk, jwt
from jwcrypto.common import JWException

from cmlfs import __version__
from cmlfs.errors import CmlfsError

ISSUER = "cmlfs-dev-kbs"
EAT_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"


class TokenError(CmlfsError):
    """A token that is not valid here (signature, expiry, shape)."""


class TokenSigner:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._key = jwk.JWK.generate(kty="EC", crv="P-256")
        public = json.loads(self._key.export_public())
        self._header = {"alg": "ES256", "typ": "JWT", "jwk": {**public, "alg": "ES256"}}

    def issue(self, tee: str, tee_claims: dict, runtime_data: dict) -> str:
        now = int(time.time())
        claims = {
            "eat_profile": EAT_PROFILE,
            "iat": now,
            "exp": now + int(self.lifetime),
            "iss": ISSUER,
            "jti": uuid.uuid4().hex,
            "ear.verifier-id": {"developer": "cmlfs", "build": f"cmlfs dev-kbs {__version__}"},
            "submods": {
                "cpu0": {
                    "ear.status": "warning",
                    "ear.appraisal-policy-id": "dev-kbs",
                    "ear.veraison.annotated-evidence": {
                        tee: tee_claims,
                        "runtime_data_claims": runtime_data,
                    },
                }
            },
        }
        token = jwt.JWT(header=self._header, claims=claims)
        token.make_signed_token(self._key)
        return token.serialize()

    def verify(self, token: str) -> dict:
        """The claims of a token this broker issued and that has not expired."""
        try:
            parsed = jwt.JWT(
                jwt=token,
                key=self._key,
                algs=["ES256"],
                check_claims={"exp": None, "iss": ISSUER},
                expected_type="JWS",
            )
            return json.loads(parsed.claims)
        except (JWException, ValueError, TypeError):
            raise TokenError("attestation token is invalid or expired") from None


def tee_of(claims: dict) -> tuple[str, dict]:
    """(tee name, tee-pubkey JWK) recorded in an attestation token's claims."""
    try:
        evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        tee = next(k for k in evidence if k != "runtime_data_claims")
        return tee, evidence["runtime_data_claims"]["tee-pubkey"]
    except (KeyError, TypeError, StopIteration):
        raise TokenError("attestation token carries no TEE public key") from None


def verify_admin_token(
    token: str, public_key: jwk.JWK, issuer: str | None = None, audience: str | None = None
) -> str:
    """The ``role`` of a valid admin token; TokenError says why it is not valid."""
    try:
        parsed = jwt.JWT(
            jwt=token,
            key=public_key,
            algs=["EdDSA"],
            check_claims={"exp": None},
            expected_type="JWS",
        )
        claims = json.loads(parsed.claims)
    except (JWException, ValueError, TypeError):
        raise TokenError("Cannot verify token with any of the issuers") from None
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenError(f"Cannot verify token with any of the issuers (iss is not {issuer!r})")
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences
    if audience is not None and (not isinstance(audiences, list) or audience not in audiences):
        raise TokenError(f"Cannot verify token with any of the issuers (aud lacks {audience!r})")
    role = claims.get("role")
    if not isinstance(role, str):
        raise TokenError("Missing required `role` claim in JWT")
    return role
