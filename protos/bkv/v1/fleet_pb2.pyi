from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FleetAnnouncement(_message.Message):
    __slots__ = ("epoch", "kem_public_key", "fleet_id", "opaque_context", "issued_at_ms")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEM_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    kem_public_key: bytes
    fleet_id: bytes
    opaque_context: bytes
    issued_at_ms: int
    def __init__(self, epoch: _Optional[int] = ..., kem_public_key: _Optional[bytes] = ..., fleet_id: _Optional[bytes] = ..., opaque_context: _Optional[bytes] = ..., issued_at_ms: _Optional[int] = ...) -> None: ...

class SignedFleetAnnouncement(_message.Message):
    __slots__ = ("announcement", "signature")
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    announcement: bytes
    signature: bytes
    def __init__(self, announcement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
