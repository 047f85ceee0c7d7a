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

class OpenFrame(_message.Message):
    __slots__ = ("id", "account_id", "envelope", "deadline_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    account_id: str
    envelope: bytes
    deadline_ms: int
    def __init__(self, id: _Optional[int] = ..., account_id: _Optional[str] = ..., envelope: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class OpenFrameReply(_message.Message):
    __slots__ = ("id", "sealed_response", "code", "details", "not_applied", "retry_after_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    NOT_APPLIED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    sealed_response: bytes
    code: int
    details: str
    not_applied: bool
    retry_after_ms: str
    def __init__(self, id: _Optional[int] = ..., sealed_response: _Optional[bytes] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., not_applied: _Optional[bool] = ..., retry_after_ms: _Optional[str] = ...) -> None: ...
