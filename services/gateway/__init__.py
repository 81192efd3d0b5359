"""The Open Inference Protocol gateway (REST and gRPC) in front of the rendezvous."""

import os

# gRPC's C core wrote a line to the log for every failed TLS handshake on the gRPC port (a
# plaintext client, an old TLS version): any caller could fill the log at will, as uvicorn's
# lines could before they were rate-limited (http_guard.py; a review). It reads the variable
# once, when grpc is imported: so here, before any module of the gateway imports it.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
