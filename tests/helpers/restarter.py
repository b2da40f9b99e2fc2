"""Run a command, and start it again at once each time it is killed with SIGKILL.

    python tests/helpers/restarter.py PIDFILE COMMAND...

What JupyterHub does for a managed service that dies, without its wait: it
notices a dead service only when it polls it (every 30 s) and then starts
the same command with the same environment again. The tests that kill the
service many times (tests/test_log_kills.py, benchmarks/soak_log_kills.py)
put this between JupyterHub and the service, so that each kill costs the
service's start-up instead of half a minute. PIDFILE holds the pid of the
running service, written before it starts and replaced at each restart.

SIGTERM and SIGINT are passed on to the service, and this then exits with it
(JupyterHub stops its managed services with SIGTERM). Any other end of the
service ends this too, with the service's exit status.
"""

import os
import signal
import subprocess
import sys


def main(argv):
    pidfile, command = argv[0], argv[1:]
    child = None
    stopping = False

    def forward(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        child = subprocess.Popen(command)
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w") as f:
            f.write(str(child.pid))
        os.replace(tmp, pidfile)
        code = child.wait()
        if stopping or code != -signal.SIGKILL:
            sys.exit(code if code >= 0 else 128 - code)
        print(f"restarter: service {child.pid} was killed; starting it again", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
