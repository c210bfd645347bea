"""Where the system trust store is: the CA certificates every TLS peer is checked against
when no CA file is given (``--kbs-ca`` for brokers, ``--store-ca`` for stores).

The system store is OpenSSL's default verify location as the ``ssl`` module reports it: on
Debian /etc/ssl/certs/ca-certificates.crt, which update-ca-certificates maintains (a private
CA dropped into /usr/local/share/ca-certificates is trusted after it runs); OpenSSL's own
SSL_CERT_FILE / SSL_CERT_DIR move it. Never the certifi bundle requests and botocore carry:
an operator who installs a CA the system's way expects cmlfs to trust it.
ssl is imported when asked, so ``cmlfs --help`` loads no TLS stack.
"""


def system_ca_location() -> str | None:
    """The system's CA bundle (file, else folder) for ``requests``/botocore ``verify``; None
    when the system has none (the caller refuses, naming its CA option)."""
    import ssl

    paths = ssl.get_default_verify_paths()
    for location in (paths.cafile, paths.capath):
        if location:
            return location
    return None


def missing_store_text() -> str:
    """Why there is no system trust store, for the caller's one-line error."""
    import ssl

    cafile = ssl.get_default_verify_paths().openssl_cafile
    return f"no system trust store (OpenSSL looks at {cafile})"
