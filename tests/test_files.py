"""The central's files whatever the umask: data directory 0700; the database, the -wal/-shm files
SQLite adds (also later, after a checkpoint removed them), the SSH key and the session secret 0600.
"""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from central import files
from central.config import load_config
from central.service import Central, ensure_key_pair
from central.storage import Storage
from central.web.security import load_session_secret
from tests.test_central_user import needs_root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000, 0o077], ids=["umask022", "umask000", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


async def test_a_new_install_is_private(tmp_path, umask):
    config = load_config(env={"CENTRAL_DATA_DIR": str(tmp_path / "fresh" / "data")})
    ensure_key_pair(config.key_path)
    central = await Central.open(config)
    try:
        await central.auth.add_user("alice", "viewer", "a long password")  # a write: the -wal and -shm exist
        db = config.database_path
        assert mode(config.data_path) == 0o700
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), config.key_path):
            assert mode(path) == 0o600, path
        assert mode(Path(f"{config.key_path}.pub")) == 0o644  # public, but never group/world writable
        load_session_secret(config.session_secret_path)
        assert mode(config.session_secret_path) == 0o600
    finally:
        await central.close()


async def test_wal_and_shm_created_later_are_0600(tmp_path, umask):
    """The -wal/-shm files go away with the last connection and come back with the next one."""
    db = tmp_path / "d" / "central.db"
    storage = await Storage.open(db)
    await storage.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    storage = await Storage.open(db)
    try:
        await storage.add_user("bob", "viewer", "x")
        assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
        assert [mode(Path(f"{db}{s}")) for s in ("", "-wal", "-shm")] == [0o600] * 3
        assert mode(db.parent) == 0o700
    finally:
        await storage.close()


async def test_an_older_install_is_tightened_on_open(tmp_path):
    """Files of an install from before this rule (0755 dir, 0644 files) are made private."""
    config = load_config(env={"CENTRAL_DATA_DIR": str(tmp_path / "data")})
    old = os.umask(0o022)
    try:
        config.data_path.mkdir(mode=0o755)
        storage = await Storage.open(config.database_path)
        await storage.add_user("carol", "viewer", "x")
        await storage.close()
        for path in (config.database_path, Path(f"{config.database_path}-wal"), Path(f"{config.database_path}-shm")):
            if path.exists():
                path.chmod(0o644)
        config.data_path.chmod(0o755)
        config.session_secret_path.write_bytes(os.urandom(32))
        config.session_secret_path.chmod(0o644)
        ensure_key_pair(config.key_path)
        config.key_path.chmod(0o644)
    finally:
        os.umask(old)
    ensure_key_pair(config.key_path)
    load_session_secret(config.session_secret_path)
    central = await Central.open(config)
    try:
        assert mode(config.data_path) == 0o700
        for path in (config.database_path, config.key_path, config.session_secret_path):
            assert mode(path) == 0o600, path
    finally:
        await central.close()


def test_create_private_never_follows_a_link_and_never_overwrites(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError):
        files.create_private(tmp_path / "link", b"secret")
    with pytest.raises(FileExistsError):
        files.create_private(target, b"secret")
    assert target.read_text() == "keep"


def test_root_gives_new_files_to_the_owner_of_the_data_dir(tmp_path):
    """`sudo central init` on a data dir of the central's own user: the files stay usable by it."""
    needs_root()
    nobody = pwd.getpwnam("nobody")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    env = {**os.environ, "CENTRAL_DATA_DIR": str(data), "CENTRAL_CONFIG": ""}
    res = subprocess.run([sys.executable, "-m", "central", "init"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("central.db", "id_ed25519", "id_ed25519.pub"):
        st = (data / name).stat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), name
    for name in ("central.db-wal", "central.db-shm"):  # SQLite itself does the same for its files
        if (data / name).exists():
            assert (data / name).stat().st_uid == nobody.pw_uid
