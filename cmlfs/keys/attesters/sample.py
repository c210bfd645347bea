"""The ``sample`` attester: evidence without a TEE, for development machines and tests.

It proves nothing: anyone can produce it. Trustee's default resource policy
refuses it; a broker releases keys to it only under a policy that says so.
The shape is what Trustee's sample verifier parses: ``svn`` as a string and
``report_data`` as standard base64 of exactly the digest (no padding to 64).
"""

import base64


class SampleAttester:
    tee = "sample"

    def evidence(self, report_data: bytes) -> dict:
        return {"svn": "1", "report_data": base64.b64encode(report_data).decode("ascii")}
