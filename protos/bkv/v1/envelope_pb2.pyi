from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_OK: _ClassVar[Outcome]
    OUTCOME_INVALID_PASSWORD: _ClassVar[Outcome]
    OUTCOME_LOCKED: _ClassVar[Outcome]
    OUTCOME_NOT_REGISTERED: _ClassVar[Outcome]
    OUTCOME_REFUSED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_OK: Outcome
OUTCOME_INVALID_PASSWORD: Outcome
OUTCOME_LOCKED: Outcome
OUTCOME_NOT_REGISTERED: Outcome
OUTCOME_REFUSED: Outcome

class EnvelopeHeader(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class SealedEnvelope(_message.Message):
    __slots__ = ("version", "fleet_id", "enc", "ciphertext")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    ENC_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    version: int
    fleet_id: bytes
    enc: bytes
    ciphertext: bytes
    def __init__(self, version: _Optional[int] = ..., fleet_id: _Optional[bytes] = ..., enc: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ContinuedEnvelope(_message.Message):
    __slots__ = ("version", "fleet_id", "ticket", "nonce", "ciphertext")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLEET_ID_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    version: int
    fleet_id: bytes
    ticket: bytes
    nonce: bytes
    ciphertext: bytes
    def __init__(self, version: _Optional[int] = ..., fleet_id: _Optional[bytes] = ..., ticket: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SealedResponse(_message.Message):
    __slots__ = ("nonce", "ciphertext")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    ciphertext: bytes
    def __init__(self, nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class RegisterStart(_message.Message):
    __slots__ = ("registration_request", "new_account_key")
    REGISTRATION_REQUEST_FIELD_NUMBER: _ClassVar[int]
    NEW_ACCOUNT_KEY_FIELD_NUMBER: _ClassVar[int]
    registration_request: bytes
    new_account_key: bytes
    def __init__(self, registration_request: _Optional[bytes] = ..., new_account_key: _Optional[bytes] = ...) -> None: ...

class RegisterFinish(_message.Message):
    __slots__ = ("registration_record", "wrapped_key", "max_attempts", "ksf")
    REGISTRATION_RECORD_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    KSF_FIELD_NUMBER: _ClassVar[int]
    registration_record: bytes
    wrapped_key: bytes
    max_attempts: int
    ksf: KsfParams
    def __init__(self, registration_record: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ..., max_attempts: _Optional[int] = ..., ksf: _Optional[_Union[KsfParams, _Mapping]] = ...) -> None: ...

class KsfParams(_message.Message):
    __slots__ = ("argon2id_time_cost", "argon2id_lanes", "argon2id_memory_kib")
    ARGON2ID_TIME_COST_FIELD_NUMBER: _ClassVar[int]
    ARGON2ID_LANES_FIELD_NUMBER: _ClassVar[int]
    ARGON2ID_MEMORY_KIB_FIELD_NUMBER: _ClassVar[int]
    argon2id_time_cost: int
    argon2id_lanes: int
    argon2id_memory_kib: int
    def __init__(self, argon2id_time_cost: _Optional[int] = ..., argon2id_lanes: _Optional[int] = ..., argon2id_memory_kib: _Optional[int] = ...) -> None: ...

class RecoverStart(_message.Message):
    __slots__ = ("ke1",)
    KE1_FIELD_NUMBER: _ClassVar[int]
    ke1: bytes
    def __init__(self, ke1: _Optional[bytes] = ...) -> None: ...

class RecoverFinish(_message.Message):
    __slots__ = ("ke3",)
    KE3_FIELD_NUMBER: _ClassVar[int]
    ke3: bytes
    def __init__(self, ke3: _Optional[bytes] = ...) -> None: ...

class Begin(_message.Message):
    __slots__ = ("op",)
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[Begin.Op]
        OP_STATUS: _ClassVar[Begin.Op]
        OP_DELETE: _ClassVar[Begin.Op]
        OP_REBIND: _ClassVar[Begin.Op]
    OP_UNSPECIFIED: Begin.Op
    OP_STATUS: Begin.Op
    OP_DELETE: Begin.Op
    OP_REBIND: Begin.Op
    OP_FIELD_NUMBER: _ClassVar[int]
    op: Begin.Op
    def __init__(self, op: _Optional[_Union[Begin.Op, str]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AccountAuth(_message.Message):
    __slots__ = ("public_key", "ts_ms", "signature")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    ts_ms: int
    signature: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., ts_ms: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class VaultRequest(_message.Message):
    __slots__ = ("response_key", "register_start", "register_finish", "recover_start", "recover_finish", "delete", "status", "begin", "auth")
    RESPONSE_KEY_FIELD_NUMBER: _ClassVar[int]
    REGISTER_START_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FINISH_FIELD_NUMBER: _ClassVar[int]
    RECOVER_START_FIELD_NUMBER: _ClassVar[int]
    RECOVER_FINISH_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    response_key: bytes
    register_start: RegisterStart
    register_finish: RegisterFinish
    recover_start: RecoverStart
    recover_finish: RecoverFinish
    delete: DeleteRequest
    status: StatusRequest
    begin: Begin
    auth: AccountAuth
    def __init__(self, response_key: _Optional[bytes] = ..., register_start: _Optional[_Union[RegisterStart, _Mapping]] = ..., register_finish: _Optional[_Union[RegisterFinish, _Mapping]] = ..., recover_start: _Optional[_Union[RecoverStart, _Mapping]] = ..., recover_finish: _Optional[_Union[RecoverFinish, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ..., begin: _Optional[_Union[Begin, _Mapping]] = ..., auth: _Optional[_Union[AccountAuth, _Mapping]] = ...) -> None: ...

class RegisterStartReply(_message.Message):
    __slots__ = ("registration_response",)
    REGISTRATION_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    registration_response: bytes
    def __init__(self, registration_response: _Optional[bytes] = ...) -> None: ...

class RegisterFinishReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecoverStartReply(_message.Message):
    __slots__ = ("ke2", "ksf")
    KE2_FIELD_NUMBER: _ClassVar[int]
    KSF_FIELD_NUMBER: _ClassVar[int]
    ke2: bytes
    ksf: KsfParams
    def __init__(self, ke2: _Optional[bytes] = ..., ksf: _Optional[_Union[KsfParams, _Mapping]] = ...) -> None: ...

class BeginReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecoverFinishReply(_message.Message):
    __slots__ = ("transported_key",)
    TRANSPORTED_KEY_FIELD_NUMBER: _ClassVar[int]
    transported_key: bytes
    def __init__(self, transported_key: _Optional[bytes] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("registered", "locked", "max_attempts", "rebind_pending", "rebind_matures_at_ms", "rebind_key", "rebind_cancelled_key")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    REBIND_PENDING_FIELD_NUMBER: _ClassVar[int]
    REBIND_MATURES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REBIND_KEY_FIELD_NUMBER: _ClassVar[int]
    REBIND_CANCELLED_KEY_FIELD_NUMBER: _ClassVar[int]
    registered: bool
    locked: bool
    max_attempts: int
    rebind_pending: bool
    rebind_matures_at_ms: int
    rebind_key: bytes
    rebind_cancelled_key: bytes
    def __init__(self, registered: _Optional[bool] = ..., locked: _Optional[bool] = ..., max_attempts: _Optional[int] = ..., rebind_pending: _Optional[bool] = ..., rebind_matures_at_ms: _Optional[int] = ..., rebind_key: _Optional[bytes] = ..., rebind_cancelled_key: _Optional[bytes] = ...) -> None: ...

class VaultResponse(_message.Message):
    __slots__ = ("outcome", "guesses_left", "register_start", "register_finish", "recover_start", "recover_finish", "delete", "status", "begin", "ticket", "max_attempts_cap")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    GUESSES_LEFT_FIELD_NUMBER: _ClassVar[int]
    REGISTER_START_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FINISH_FIELD_NUMBER: _ClassVar[int]
    RECOVER_START_FIELD_NUMBER: _ClassVar[int]
    RECOVER_FINISH_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_CAP_FIELD_NUMBER: _ClassVar[int]
    outcome: Outcome
    guesses_left: int
    register_start: RegisterStartReply
    register_finish: RegisterFinishReply
    recover_start: RecoverStartReply
    recover_finish: RecoverFinishReply
    delete: DeleteReply
    status: StatusReply
    begin: BeginReply
    ticket: bytes
    max_attempts_cap: int
    def __init__(self, outcome: _Optional[_Union[Outcome, str]] = ..., guesses_left: _Optional[int] = ..., register_start: _Optional[_Union[RegisterStartReply, _Mapping]] = ..., register_finish: _Optional[_Union[RegisterFinishReply, _Mapping]] = ..., recover_start: _Optional[_Union[RecoverStartReply, _Mapping]] = ..., recover_finish: _Optional[_Union[RecoverFinishReply, _Mapping]] = ..., delete: _Optional[_Union[DeleteReply, _Mapping]] = ..., status: _Optional[_Union[StatusReply, _Mapping]] = ..., begin: _Optional[_Union[BeginReply, _Mapping]] = ..., ticket: _Optional[bytes] = ..., max_attempts_cap: _Optional[int] = ...) -> None: ...
