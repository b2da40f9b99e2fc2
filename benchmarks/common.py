"""What the build benchmarks share: percentiles, the service's process, a filled database.

Every benchmark starts a real JupyterHub + configurable-http-proxy with the
service as a managed service (``tests.helpers.fixtures.running_hub``), so requests go
through HubOAuth token checks like a client's; all traffic stays on 127.0.0.1.
"""

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tljh_repo2docker.db import store  # noqa: E402
from tljh_repo2docker.db.session import make_engine, make_sessionmaker, upgrade_db  # noqa: E402

ACCESS = "access:services!service=tljh_repo2docker"
# The hub user "admin" is a hub admin, which is what makes it an admin of the service.
ADMIN_SCOPES = [ACCESS]


def percentile(values, q):
    """Nearest-rank percentile of ``values`` (q in 0..100)."""
    values = sorted(values)
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def service_pid(hub_info):
    """The pid of the service process JupyterHub started."""
    result = subprocess.run(
        ["pgrep", "-f", f"tljh_repo2docker --port={hub_info.service_port}"],
        capture_output=True,
        text=True,
    )
    pids = [int(p) for p in result.stdout.split()]
    if len(pids) != 1:
        raise RuntimeError(f"expected one service process, found {pids}")
    return pids[0]


def rss(pid):
    """``(current, peak)`` resident set size of ``pid`` in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def fill_db(db_path, count, image_prefix="tljh-r2d-bench/"):
    """Create the service's database at ``db_path`` with ``count`` built environments.

    Goes through the same store functions as the service (one short session
    per call), so it takes a while for 10,000: about 2 ms per environment.
    """
    engine = make_engine(f"sqlite:///{db_path}")
    await upgrade_db(engine)
    sessions = make_sessionmaker(engine)
    for number in range(count):
        uid = uuid.uuid4().hex
        name = f"bench-{number:05d}"
        await store.create_environment(
            sessions,
            uid=uid,
            name=name,
            image_name=f"{image_prefix}{name}:main",
            repo=f"https://git.example.invalid/owner/{name}.git",
            ref="main",
            memory="2G",
            cpu=1.0,
            node_selector={},
            build_args={},
            owner="admin",
        )
        await store.update_environment(
            sessions,
            uid,
            status=store.BUILT,
            image_id="sha256:" + uuid.uuid4().hex * 2,
            size=700_000_000,
            commit=uuid.uuid4().hex[:40] + "0" * 8,
            started=store.now(),
            finished=store.now(),
        )
    await engine.dispose()


def run(coro):
    return asyncio.run(coro)
