from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaptureVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTURE_VERDICT_UNSPECIFIED: _ClassVar[CaptureVerdict]
    CAPTURE_VERDICT_CAPTURED: _ClassVar[CaptureVerdict]
    CAPTURE_VERDICT_BEHIND: _ClassVar[CaptureVerdict]
    CAPTURE_VERDICT_ROLLBACK: _ClassVar[CaptureVerdict]
    CAPTURE_VERDICT_NOT_READY: _ClassVar[CaptureVerdict]
CAPTURE_VERDICT_UNSPECIFIED: CaptureVerdict
CAPTURE_VERDICT_CAPTURED: CaptureVerdict
CAPTURE_VERDICT_BEHIND: CaptureVerdict
CAPTURE_VERDICT_ROLLBACK: CaptureVerdict
CAPTURE_VERDICT_NOT_READY: CaptureVerdict

class HeadRef(_message.Message):
    __slots__ = ("group", "version", "hash")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    group: int
    version: int
    hash: bytes
    def __init__(self, group: _Optional[int] = ..., version: _Optional[int] = ..., hash: _Optional[bytes] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("nonce", "base", "base_prev", "head", "base_recent")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    BASE_PREV_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    BASE_RECENT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    base: HeadRef
    base_prev: bytes
    head: HeadRef
    base_recent: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, nonce: _Optional[bytes] = ..., base: _Optional[_Union[HeadRef, _Mapping]] = ..., base_prev: _Optional[bytes] = ..., head: _Optional[_Union[HeadRef, _Mapping]] = ..., base_recent: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CaptureReply(_message.Message):
    __slots__ = ("witness", "verdict", "held", "mac")
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    witness: str
    verdict: CaptureVerdict
    held: HeadRef
    mac: bytes
    def __init__(self, witness: _Optional[str] = ..., verdict: _Optional[_Union[CaptureVerdict, str]] = ..., held: _Optional[_Union[HeadRef, _Mapping]] = ..., mac: _Optional[bytes] = ...) -> None: ...

class HeadsRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class HeadsReply(_message.Message):
    __slots__ = ("witness", "heads", "mac", "ready")
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    witness: str
    heads: _containers.RepeatedCompositeFieldContainer[HeadRef]
    mac: bytes
    ready: bool
    def __init__(self, witness: _Optional[str] = ..., heads: _Optional[_Iterable[_Union[HeadRef, _Mapping]]] = ..., mac: _Optional[bytes] = ..., ready: _Optional[bool] = ...) -> None: ...

class CaptureFrame(_message.Message):
    __slots__ = ("id", "capture", "session_nonce", "told")
    ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    SESSION_NONCE_FIELD_NUMBER: _ClassVar[int]
    TOLD_FIELD_NUMBER: _ClassVar[int]
    id: int
    capture: CaptureRequest
    session_nonce: bytes
    told: _containers.RepeatedCompositeFieldContainer[CaptureRequest]
    def __init__(self, id: _Optional[int] = ..., capture: _Optional[_Union[CaptureRequest, _Mapping]] = ..., session_nonce: _Optional[bytes] = ..., told: _Optional[_Iterable[_Union[CaptureRequest, _Mapping]]] = ...) -> None: ...

class CaptureFrameReply(_message.Message):
    __slots__ = ("id", "reply", "session_nonce")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    SESSION_NONCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    reply: CaptureReply
    session_nonce: bytes
    def __init__(self, id: _Optional[int] = ..., reply: _Optional[_Union[CaptureReply, _Mapping]] = ..., session_nonce: _Optional[bytes] = ...) -> None: ...
