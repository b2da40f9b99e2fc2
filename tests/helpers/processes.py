"""The processes of a running hub: ``service_pids(hub)`` gives the pids of
the service's processes (found by their command line).
"""

import subprocess


def service_pids(hub):
    result = subprocess.run(
        ["pgrep", "-f", f"tljh_repo2docker --port={hub.service_port}"],
        capture_output=True,
        text=True,
    )
    return [int(pid) for pid in result.stdout.split()]
