from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OpenRequest(_message.Message):
    __slots__ = ("account_id", "envelope")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    envelope: bytes
    def __init__(self, account_id: _Optional[str] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class OpenReply(_message.Message):
    __slots__ = ("sealed_response",)
    SEALED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    sealed_response: bytes
    def __init__(self, sealed_response: _Optional[bytes] = ...) -> None: ...
