"""The files a running ``streamrec up`` announces itself by (core/addresses.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from streamrec.core.addresses import (
    EmbeddedAddresses,
    VectorHostAddress,
    through_running_vector_host,
)
from streamrec.core.settings import Settings


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_an_announced_file_is_owner_only_and_gone_after_its_block(tmp_path: Path) -> None:
    address = VectorHostAddress(url="http://127.0.0.1:9", token="secret", pid=os.getpid())
    with address.announced(tmp_path):
        path = tmp_path / VectorHostAddress.FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the run's token
        assert VectorHostAddress.read(tmp_path) == address
        assert EmbeddedAddresses.read(tmp_path) is None  # each kind in its own file
    assert not path.exists() and VectorHostAddress.read(tmp_path) is None


def test_the_file_of_a_process_that_is_gone_is_ignored(tmp_path: Path) -> None:
    VectorHostAddress(url="http://127.0.0.1:9", token="t", pid=_dead_pid()).write(tmp_path)
    assert VectorHostAddress.read(tmp_path) is None


def test_a_command_goes_through_the_running_vector_host_only_on_embedded_qdrant(
    tmp_path: Path,
) -> None:
    embedded = Settings(var_dir=tmp_path, qdrant_url="embedded", vector_host_url="")
    assert through_running_vector_host(embedded) is embedded  # nothing runs
    VectorHostAddress(url="http://127.0.0.1:9", token="t0k", pid=os.getpid()).write(tmp_path)
    attached = through_running_vector_host(embedded)
    assert attached.vector_host_url == "http://127.0.0.1:9"
    assert attached.vector_host_token == SecretStr("t0k")
    server = Settings(var_dir=tmp_path, qdrant_url="http://qdrant:6333", vector_host_url="")
    assert through_running_vector_host(server) is server  # a Qdrant server serves everyone
    chosen = embedded.model_copy(update={"vector_host_url": "http://127.0.0.1:7"})
    assert through_running_vector_host(chosen) is chosen  # an explicit host wins
