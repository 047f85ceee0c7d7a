"""What the client, the frontend and the vault node share on the wire and around it.

Wire constants (`wire`), the decode guard every server installs (`decode_guard`), the audit line
the node writes and the chaos checker reads (`audit_line`, with `jsonl` for its field checks),
gRPC channel options and mTLS channel credentials (`channels`), TOML config reading
(`toml_config`), the Prometheus endpoint and its label children (`metrics_http`), the event loop
a process runs on and its stop signals (`event_loop`), and ending a background task (`tasks`).

It imports only the standard library, grpc and protobuf (and, lazily, prometheus-client in
`metrics_http` and uvloop in `event_loop`): never another package of ours, so each of client,
frontend and node may import it without importing one another.
"""
