"""The protocol core's errors.

Every failure to decrypt is one `DecryptError`, whatever the cause.
"""


class ProtocolError(Exception):
    """Base of every error raised by `vault_protocol`."""


class InvalidInput(ProtocolError):
    """Malformed, truncated, oversized or out-of-range input (a bug or an attack; never retry)."""


class KeyFormatError(InvalidInput):
    """A 64-hex-digit backup key that does not parse; the message says why, never the key."""


class DecryptError(ProtocolError):
    """An envelope, response, ticket, record or backup file failed to open.

    One error for every cause (wrong key, flipped bit, truncation, reordering) so that no
    caller can be used as an oracle.
    """


class SignatureError(ProtocolError):
    """A request's account signature is missing, malformed or does not verify (issue 17).

    One error for every cause; the request must change nothing."""


class AuthenticationError(ProtocolError):
    """OPAQUE authentication failed.

    On the client: wrong password (the envelope does not open) or a bad server MAC.
    On the server: a wrong client MAC.
    """
