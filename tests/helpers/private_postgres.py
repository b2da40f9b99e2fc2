"""A PostgreSQL server of a test's own (``PrivatePostgres``), which it may stop
and start at will: ``initdb`` in a temporary directory, run as the ``postgres``
user. Needs root, ``runuser`` and PostgreSQL's programs in ``PG_BIN``; fails
under ``CI=true`` and skips elsewhere without them.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.fixtures import _free_port, need

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL server of the test's own, which it may stop and start at will."""

    def __init__(self):
        if os.geteuid() != 0 or shutil.which("runuser") is None or not (PG_BIN / "initdb").exists():
            need(f"a private PostgreSQL needs root, runuser and {PG_BIN}/initdb")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tljh-r2d-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/tljh"
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", self.port, "tljh")

    def _run(self, *args):
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, args)],
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def start(self):
        options = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-o", options, "-w", "start")

    def stop(self):
        """Like a crash: connections cut at once, no checkpoint."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def remove(self):
        try:
            self.stop()
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.dir, ignore_errors=True)
