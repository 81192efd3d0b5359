"""Python stubs of `inference.proto`, generated with grpcio-tools at first import, never committed.

The stubs are written into `_generated/` beside the .proto (git-ignored, and no package, so a wheel
built from a checkout never ships them) when this directory is writable (a checkout, an editable
install, a container image that imports them once at build time), else into a per-user cache
directory (a wheel in a read-only site-packages); that place joins this package's `__path__`. A stamp
(sha256 of the .proto and the generator's version) tells stale stubs apart; generation writes into
a temporary directory and renames the files into place, so processes starting together never
import a half-written module.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

from services.core.errors import ConfigError

HERE = Path(__file__).resolve().parent
PROTO = HERE / "inference.proto"
# protoc sees the file as services/gateway/proto/inference.proto, so the generated gRPC module
# imports its messages as `services.gateway.proto.inference_pb2`.
ROOT = HERE.parents[2]
MODULES = ("inference_pb2", "inference_pb2_grpc")
STAMP = "inference.stamp"


def _fingerprint() -> str:
    from grpc_tools import protoc

    version = getattr(protoc, "__version__", None) or _tools_version()
    return hashlib.sha256(PROTO.read_bytes() + version.encode()).hexdigest()


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def _fresh(place: Path, fingerprint: str) -> bool:
    try:
        return (place / STAMP).read_text().strip() == fingerprint and all(
            (place / f"{m}.py").is_file() for m in MODULES
        )
    except OSError:
        return False


def _generate(place: Path, fingerprint: str) -> None:
    from grpc_tools import protoc

    place.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".gen-", dir=place))
    try:
        args = ["protoc", f"-I{ROOT}", f"--python_out={scratch}", f"--grpc_python_out={scratch}",
                str(PROTO.relative_to(ROOT))]
        if protoc.main(args) != 0:
            raise ConfigError(f"grpcio-tools could not compile {PROTO}")
        made = scratch / PROTO.parent.relative_to(ROOT)
        for module in MODULES:
            os.replace(made / f"{module}.py", place / f"{module}.py")
        (scratch / STAMP).write_text(fingerprint + "\n")
        os.replace(scratch / STAMP, place / STAMP)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cache_dir(fingerprint: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.access(os.path.dirname(base) or "/", os.W_OK) and not os.access(base, os.W_OK):
        base = tempfile.gettempdir()
    return Path(base) / "rendezvous-serving" / f"grpc-{fingerprint[:16]}"


@cache
def stubs() -> tuple[ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc), generated first if missing or stale."""
    fingerprint = _fingerprint()
    place = HERE / "_generated"
    if not _fresh(place, fingerprint) and not os.access(HERE, os.W_OK):
        place = _cache_dir(fingerprint)
    if not _fresh(place, fingerprint):
        _generate(place, fingerprint)
    __path__.insert(0, str(place))  # this package's generated modules are found there
    messages = importlib.import_module(f"{__name__}.inference_pb2")
    services = importlib.import_module(f"{__name__}.inference_pb2_grpc")
    return messages, services
