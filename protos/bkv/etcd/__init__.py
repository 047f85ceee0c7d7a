"""Generated code for the subset of etcd's v3 API that `etcd_client` speaks (from the trimmed
copies of etcd 3.4's rpc.proto, kv.proto and auth.proto beside this file; regenerate with
scripts/gen_protos.sh).

etcd's own package names (etcdserverpb, mvccpb, authpb) keep the gRPC method paths etcd serves,
so no other etcd proto set may be loaded in the same process: protobuf's registry would refuse
the duplicate names (aetcd, which the project used before, is gone for this reason too).
"""
