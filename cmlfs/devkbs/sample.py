"""dev-kbs verifier for ``sample`` evidence, as Trustee's (trustee deps/verifier/src/sample/mod.rs).

Evidence ``{"svn": str, "report_data": base64}`` (``report_data`` defaults to
""); report_data must decode to exactly the runtime-data digest. It proves
nothing about the machine: dev-kbs's default policy releases to it only on
loopback, as Trustee's default policy never releases to it.
"""

import hmac

from cmlfs.devkbs.verify import VerifyError
from cmlfs.keys.rcar import b64_decode


def verify_sample(evidence: object, report_data: bytes) -> dict:
    """The claims of sample evidence whose report_data is exactly ``report_data``."""
    if (
        not isinstance(evidence, dict)
        or not isinstance(evidence.get("svn"), str)
        or not isinstance(evidence.get("report_data", ""), str)
    ):
        raise VerifyError("sample evidence is not {svn, report_data}: Deserialize Quote failed.")
    encoded = evidence.get("report_data", "")
    quoted = b64_decode(encoded, "sample report_data", VerifyError)
    if not hmac.compare_digest(quoted, report_data):
        raise VerifyError("REPORT_DATA is different from that in Sample Quote")
    return {
        "svn": evidence["svn"],
        "report_data": encoded,
        "launch_digest": "abcde",
        "platform_version": {"major": 1, "minor": 4},
        "debug": False,
    }
