"""Environments made without the service, for the spawners' tests.

- ``build_environment(base, tag, **labels)``: an image tagged from ``base`` with
  the labels a build leaves on its image.
- ``UPSTREAM``: what tljh-repo2docker 3.x left on its images and servers
  (``tests/data/upstream-3x.json``).
"""

import json
import subprocess
from pathlib import Path


def build_environment(base, tag, **labels):
    """Tag ``base`` with environment labels, the way a build labels its image."""
    args = []
    for name, value in labels.items():
        args += ["--label", f"tljh_repo2docker.{name}={value}"]
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, *args, "-"],
        input=f"FROM {base}\n",
        text=True,
        check=True,
        capture_output=True,
    )
    return tag


UPSTREAM = json.loads((Path(__file__).parent.parent / "data" / "upstream-3x.json").read_text())
