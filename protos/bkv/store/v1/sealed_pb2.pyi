from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_STATE_UNSPECIFIED: _ClassVar[RecordState]
    RECORD_STATE_ACTIVE: _ClassVar[RecordState]
    RECORD_STATE_LOCKED: _ClassVar[RecordState]
    RECORD_STATE_RESERVED: _ClassVar[RecordState]
RECORD_STATE_UNSPECIFIED: RecordState
RECORD_STATE_ACTIVE: RecordState
RECORD_STATE_LOCKED: RecordState
RECORD_STATE_RESERVED: RecordState

class Sealed(_message.Message):
    __slots__ = ("key_name", "nonce", "ciphertext")
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    nonce: bytes
    ciphertext: bytes
    def __init__(self, key_name: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("state", "opaque_record", "wrapped_key", "attempts", "max_attempts", "generation", "evaluations", "last_redeemed", "version", "credential_scheme", "ksf_params", "account_key", "last_auth_ms", "pending_key", "pending_since_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_RECORD_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_SCHEME_FIELD_NUMBER: _ClassVar[int]
    KSF_PARAMS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_AUTH_MS_FIELD_NUMBER: _ClassVar[int]
    PENDING_KEY_FIELD_NUMBER: _ClassVar[int]
    PENDING_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    state: RecordState
    opaque_record: bytes
    wrapped_key: bytes
    attempts: int
    max_attempts: int
    generation: bytes
    evaluations: int
    last_redeemed: int
    version: int
    credential_scheme: int
    ksf_params: bytes
    account_key: bytes
    last_auth_ms: int
    pending_key: bytes
    pending_since_ms: int
    def __init__(self, state: _Optional[_Union[RecordState, str]] = ..., opaque_record: _Optional[bytes] = ..., wrapped_key: _Optional[bytes] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., generation: _Optional[bytes] = ..., evaluations: _Optional[int] = ..., last_redeemed: _Optional[int] = ..., version: _Optional[int] = ..., credential_scheme: _Optional[int] = ..., ksf_params: _Optional[bytes] = ..., account_key: _Optional[bytes] = ..., last_auth_ms: _Optional[int] = ..., pending_key: _Optional[bytes] = ..., pending_since_ms: _Optional[int] = ...) -> None: ...

class RegistrationTicket(_message.Message):
    __slots__ = ("record_id", "generation", "base_revision", "expires_at_ms", "base_create_revision", "base_version", "account_key", "auth_ms")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    BASE_CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_KEY_FIELD_NUMBER: _ClassVar[int]
    AUTH_MS_FIELD_NUMBER: _ClassVar[int]
    record_id: bytes
    generation: bytes
    base_revision: int
    expires_at_ms: int
    base_create_revision: int
    base_version: int
    account_key: bytes
    auth_ms: int
    def __init__(self, record_id: _Optional[bytes] = ..., generation: _Optional[bytes] = ..., base_revision: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., base_create_revision: _Optional[int] = ..., base_version: _Optional[int] = ..., account_key: _Optional[bytes] = ..., auth_ms: _Optional[int] = ...) -> None: ...

class Ticket(_message.Message):
    __slots__ = ("record_id", "generation", "evaluation", "expected_client_mac", "session_key", "expires_at_ms", "create_revision", "version", "op", "request_key", "answer_key", "registration", "void", "closed_outcome", "signer_key", "rebind_cancelled_key")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[Ticket.Op]
        OP_REGISTER: _ClassVar[Ticket.Op]
        OP_RECOVER: _ClassVar[Ticket.Op]
        OP_STATUS: _ClassVar[Ticket.Op]
        OP_DELETE: _ClassVar[Ticket.Op]
    OP_UNSPECIFIED: Ticket.Op
    OP_REGISTER: Ticket.Op
    OP_RECOVER: Ticket.Op
    OP_STATUS: Ticket.Op
    OP_DELETE: Ticket.Op
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CLIENT_MAC_FIELD_NUMBER: _ClassVar[int]
    SESSION_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_KEY_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    VOID_FIELD_NUMBER: _ClassVar[int]
    CLOSED_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SIGNER_KEY_FIELD_NUMBER: _ClassVar[int]
    REBIND_CANCELLED_KEY_FIELD_NUMBER: _ClassVar[int]
    record_id: bytes
    generation: bytes
    evaluation: int
    expected_client_mac: bytes
    session_key: bytes
    expires_at_ms: int
    create_revision: int
    version: int
    op: Ticket.Op
    request_key: bytes
    answer_key: bytes
    registration: RegistrationTicket
    void: bool
    closed_outcome: int
    signer_key: bytes
    rebind_cancelled_key: bytes
    def __init__(self, record_id: _Optional[bytes] = ..., generation: _Optional[bytes] = ..., evaluation: _Optional[int] = ..., expected_client_mac: _Optional[bytes] = ..., session_key: _Optional[bytes] = ..., expires_at_ms: _Optional[int] = ..., create_revision: _Optional[int] = ..., version: _Optional[int] = ..., op: _Optional[_Union[Ticket.Op, str]] = ..., request_key: _Optional[bytes] = ..., answer_key: _Optional[bytes] = ..., registration: _Optional[_Union[RegistrationTicket, _Mapping]] = ..., void: _Optional[bool] = ..., closed_outcome: _Optional[int] = ..., signer_key: _Optional[bytes] = ..., rebind_cancelled_key: _Optional[bytes] = ...) -> None: ...

class StoreCheckpoint(_message.Message):
    __slots__ = ("sequence", "cluster_id", "high_water", "alarm", "alarm_revision", "alarmed_groups", "accepted_at_ms")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    HIGH_WATER_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    ALARM_REVISION_FIELD_NUMBER: _ClassVar[int]
    ALARMED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    cluster_id: int
    high_water: int
    alarm: str
    alarm_revision: int
    alarmed_groups: _containers.RepeatedScalarFieldContainer[int]
    accepted_at_ms: int
    def __init__(self, sequence: _Optional[int] = ..., cluster_id: _Optional[int] = ..., high_water: _Optional[int] = ..., alarm: _Optional[str] = ..., alarm_revision: _Optional[int] = ..., alarmed_groups: _Optional[_Iterable[int]] = ..., accepted_at_ms: _Optional[int] = ...) -> None: ...

class HeadEntry(_message.Message):
    __slots__ = ("record_id", "digest")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    record_id: bytes
    digest: bytes
    def __init__(self, record_id: _Optional[bytes] = ..., digest: _Optional[bytes] = ...) -> None: ...

class GroupHead(_message.Message):
    __slots__ = ("group", "version", "prev", "entries", "recent")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    group: int
    version: int
    prev: bytes
    entries: _containers.RepeatedCompositeFieldContainer[HeadEntry]
    recent: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, group: _Optional[int] = ..., version: _Optional[int] = ..., prev: _Optional[bytes] = ..., entries: _Optional[_Iterable[_Union[HeadEntry, _Mapping]]] = ..., recent: _Optional[_Iterable[bytes]] = ...) -> None: ...

class WitnessCheckpoint(_message.Message):
    __slots__ = ("sequence", "heads", "adopt_store")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ADOPT_STORE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    heads: _containers.RepeatedScalarFieldContainer[bytes]
    adopt_store: bool
    def __init__(self, sequence: _Optional[int] = ..., heads: _Optional[_Iterable[bytes]] = ..., adopt_store: _Optional[bool] = ...) -> None: ...

class FleetState(_message.Message):
    __slots__ = ("sequence", "accepted", "seal", "retired_fleet_ids")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FLEET_IDS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted: _containers.RepeatedScalarFieldContainer[int]
    seal: int
    retired_fleet_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sequence: _Optional[int] = ..., accepted: _Optional[_Iterable[int]] = ..., seal: _Optional[int] = ..., retired_fleet_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...
