"""Backup Key Vault's asyncio client of etcd 3.4's v3 API, over grpcio with TLS and
client-certificate authentication (etcd user = the certificate's CN).

    from etcd_client import EtcdClient, EtcdClientConfig, EtcdTls

Modules: `config` (what to dial, with which identity), `errors` (the error tree and the one
gRPC-status mapping), `types` (results and transaction operations), `convert` (types <-> etcd's
protobuf messages), `client` (EtcdClient), `keepalive` (the shared LeaseKeepAlive stream),
`admin` (roles, users and enabling auth). The protobuf code is `bkv.etcd` (protos/bkv/etcd).
"""

from etcd_client.admin import AuthPlan, bootstrap_auth
from etcd_client.client import EtcdClient
from etcd_client.config import EtcdClientConfig, EtcdTls
from etcd_client.errors import (
    EtcdAlreadyExists,
    EtcdAuthError,
    EtcdAuthOldRevision,
    EtcdCompacted,
    EtcdError,
    EtcdNotFound,
    EtcdPermissionDenied,
    EtcdRequestError,
    EtcdUnavailable,
    error_from_rpc,
)
from etcd_client.types import (
    Compare,
    Delete,
    DeleteResult,
    Get,
    Header,
    KeyValue,
    LeaseGrantResult,
    Permission,
    Put,
    PutResult,
    RangeResult,
    StatusResult,
    TxnResult,
    WatchEvent,
    prefix_end,
)

__all__ = [
    "AuthPlan",
    "Compare",
    "Delete",
    "DeleteResult",
    "EtcdAlreadyExists",
    "EtcdAuthError",
    "EtcdAuthOldRevision",
    "EtcdClient",
    "EtcdClientConfig",
    "EtcdCompacted",
    "EtcdError",
    "EtcdNotFound",
    "EtcdPermissionDenied",
    "EtcdRequestError",
    "EtcdTls",
    "EtcdUnavailable",
    "Get",
    "Header",
    "KeyValue",
    "LeaseGrantResult",
    "Permission",
    "Put",
    "PutResult",
    "RangeResult",
    "StatusResult",
    "TxnResult",
    "WatchEvent",
    "bootstrap_auth",
    "error_from_rpc",
    "prefix_end",
]
