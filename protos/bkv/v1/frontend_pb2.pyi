from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChallengeRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class ChallengeReply(_message.Message):
    __slots__ = ("challenge",)
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    def __init__(self, challenge: _Optional[bytes] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("account_id", "public_key", "challenge", "signature", "enrollment_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    public_key: bytes
    challenge: bytes
    signature: bytes
    enrollment_token: str
    def __init__(self, account_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., challenge: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., enrollment_token: _Optional[str] = ...) -> None: ...

class LoginReply(_message.Message):
    __slots__ = ("session_token", "expires_at_ms")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    expires_at_ms: int
    def __init__(self, session_token: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class ChangeKeyRequest(_message.Message):
    __slots__ = ("account_id", "public_key", "new_public_key", "challenge", "signature", "new_signature")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    public_key: bytes
    new_public_key: bytes
    challenge: bytes
    signature: bytes
    new_signature: bytes
    def __init__(self, account_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., new_public_key: _Optional[bytes] = ..., challenge: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., new_signature: _Optional[bytes] = ...) -> None: ...

class RelayRequest(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    def __init__(self, envelope: _Optional[bytes] = ...) -> None: ...

class RelayReply(_message.Message):
    __slots__ = ("sealed_response",)
    SEALED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    sealed_response: bytes
    def __init__(self, sealed_response: _Optional[bytes] = ...) -> None: ...

class FleetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetReply(_message.Message):
    __slots__ = ("announcement",)
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    announcement: bytes
    def __init__(self, announcement: _Optional[bytes] = ...) -> None: ...
