"""`sealed_pb2`: records, tickets, group heads and checkpoints as the vault node stores them
(generated from sealed.proto beside this file; regenerate with scripts/gen_protos.sh)."""
