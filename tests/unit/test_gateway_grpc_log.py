"""A failed TLS handshake on the gateway's gRPC port writes nothing to its log: any caller could
fill it with gRPC's own line for each (a review: 50 plaintext connections, 50 lines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SERVER = """
import socket, sys
from concurrent.futures import ThreadPoolExecutor
import services.gateway.grpc_api  # what the gateway imports grpc through
import grpc
key, cert = (open(path, "rb").read() for path in sys.argv[1:3])
server = grpc.server(ThreadPoolExecutor(1))
port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
server.start()
for _ in range(5):  # plaintext at the TLS port: each handshake fails
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\\r\\n\\r\\n")
        conn.settimeout(2)
        try:
            conn.recv(10)
        except OSError:
            pass
server.stop(0).wait()
print("served", flush=True)
"""


def test_failed_tls_handshakes_on_the_grpc_port_write_no_log_line(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    done = subprocess.run([sys.executable, "-c", SERVER, str(key), str(cert)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr
    assert "Handshake failed" not in done.stderr, done.stderr
