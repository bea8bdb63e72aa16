"""The migrations ship inside the package: an installed (non-editable) copy migrates."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from monitor.store.store import migrations_config
from tests.conftest import config_dict, write_config

REPO = Path(__file__).resolve().parent.parent


def _source_copy(folder: Path) -> Path:
    """What a fresh clone holds: setuptools builds in the source tree's `build/`, and a
    stale one (say, from before a migration was renamed) would ship files git no longer has."""
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("monitor", "migrations"):
        shutil.copytree(REPO / name, source / name, ignore=skip)
    return source


def test_installed_package_migrates_a_fresh_database(tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(_source_copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "monitor" / "migrations" / "versions" / "0001_initial.py").is_file()
    assert not (target / "migrations").exists()

    group = {
        "model_group_name": "g",
        "model_name": "m",
        "endpoints": [{"name": "a", "base_url": "http://127.0.0.1:9/v1", "api_key": "k-123456"}],
    }
    path = write_config(tmp_path, config_dict(tmp_path, [group]))
    env = {**os.environ, "PYTHONPATH": str(target)}
    # Run from an empty folder so nothing can come from the source tree.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import monitor.migrations as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "db", "upgrade", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(tmp_path / "monitor.db")
    try:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        version = conn.execute("select version_num from alembic_version").fetchone()[0]
        journal = conn.execute("pragma journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert {
        "endpoints",
        "probe_results",
        "rollups",
        "groups",
        "switches",
        "events",
        "alert_outbox",
    } <= tables
    # The newest revision shipped, whatever its number.
    head = ScriptDirectory.from_config(migrations_config()).get_current_head()
    assert version == head
    assert journal == "wal"
