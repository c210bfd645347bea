"""dev-kbs evidence verification errors: one type, its message names the failed check."""

from cmlfs.errors import CmlfsError


class VerifyError(CmlfsError):
    """Evidence that fails a verifier check; answered as Trustee's AttestationError."""
