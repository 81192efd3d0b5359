"""The gateway's `.proto` against the protocol as an independent implementation has it, and its stubs
generated from a wheel installed read-only.

Each side runs in a child process: the two files define the same `inference.*` messages, which one
protobuf descriptor pool refuses to hold twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RPCS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")

DUMP = """
import json, sys
from google.protobuf.descriptor import FieldDescriptor
if sys.argv[1] == "ours":
    from services.gateway.proto import stubs
    pb, _ = stubs()
else:
    from tritonclient.grpc import service_pb2 as pb
service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
out = {"service": service.full_name, "rpcs": {}, "messages": {}}
todo = []
for name in json.loads(sys.argv[2]):
    method = service.methods_by_name[name]
    out["rpcs"][name] = [method.input_type.full_name, method.output_type.full_name]
    todo += [method.input_type, method.output_type]
while todo:
    message = todo.pop()
    if message.full_name in out["messages"]:
        continue
    fields = {}
    for f in message.fields:
        fields[f.name] = [f.number, f.type, f.label, f.message_type.full_name if f.message_type else None]
        if f.message_type is not None:
            todo.append(f.message_type)
    out["messages"][message.full_name] = fields
print(json.dumps(out))
"""


def dump(side: str, cwd: Path = REPO, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", DUMP, side, json.dumps(RPCS)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env, check=False, **kwargs)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_our_proto_is_the_protocols_service_with_its_field_numbers() -> None:
    ours, theirs = dump("ours"), dump("triton")
    assert ours["service"] == theirs["service"] == "inference.GRPCInferenceService"
    assert ours["rpcs"] == theirs["rpcs"]
    checked = 0
    for message, fields in ours["messages"].items():
        assert message in theirs["messages"], message
        for name, spec in fields.items():
            # Same number, type, label and message type: the same bytes on the wire.
            assert theirs["messages"][message].get(name) == spec, f"{message}.{name}"
            checked += 1
    assert checked > 40


@pytest.fixture
def wheel_site() -> Iterator[Path]:
    """The project built as a wheel and installed into a directory of its own (no editable finder)."""
    work = Path(tempfile.mkdtemp(prefix="rdv-wheel-"))
    try:
        # The sources as a clean clone has them (no stubs generated here, no stale build/).
        source = work / "src"
        shutil.copytree(REPO / "services", source / "services",
                        ignore=shutil.ignore_patterns("_generated", "__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, source / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"),
                        str(source)], check=True, timeout=300, capture_output=True)
        (wheel,) = (work / "dist").glob("rendezvous_serving-*.whl")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(work / "site"), str(wheel)], check=True, timeout=300, capture_output=True)
        yield work
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_a_wheel_generates_its_stubs_at_first_import(wheel_site: Path) -> None:
    """Nothing generated ships; the first import writes the stubs beside the .proto, or, where that
    is read-only (checked when not running as root, who may write anywhere), into the user's cache."""
    site, cache = wheel_site / "site", wheel_site / "cache"
    package = site / "services" / "gateway"
    assert (package / "proto" / "inference.proto").is_file()
    assert {p.name for p in (package / "static").iterdir()} >= {"ui.html", "ui.js", "ui.css"}
    assert not list((package / "proto").rglob("*_pb2*.py")), "generated code must not ship"
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(cache)}
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
        assert dump("ours", cwd=wheel_site, env=env)["service"] == "inference.GRPCInferenceService"
        assert list(cache.glob("rendezvous-serving/grpc-*/inference_pb2_grpc.py")), "stubs not in the cache"
        subprocess.run(["chmod", "-R", "u+w", str(site)], check=True)
    assert dump("ours", cwd=wheel_site, env=env)["service"] == "inference.GRPCInferenceService"
    assert (package / "proto" / "_generated" / "inference_pb2_grpc.py").is_file()
