"""What the client, the frontend and the vault node share on the wire and around it.

Wire constants (`wire`), the decode guard every server installs (`decode_guard`), the audit line
the node writes and the chaos checker reads (`audit_line`, with `jsonl` for its field checks),
gRPC channel options (`channels`), TOML config reading (`toml_config`) and the Prometheus
endpoint (`metrics_http`).

It imports only the standard library, grpc and protobuf (and, in `metrics_http` alone,
prometheus-client): never another package of ours, so each
of client, frontend and node may import it without importing one another.
"""
