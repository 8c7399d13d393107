"""`python -m workbench.launch.bootstrap MODULE:FUNCTION ARG...`: how a fresh interpreter (or each of
torchrun's processes) starts a measuring function, the exec'd twin of the fork server's child.

A launcher stops a worker's group with SIGINT (then SIGKILL). Arriving while torch is still being
imported, that would print a long traceback from deep inside torch; here the signals end the process
at once with 128 + the signal's number, silently, until the measuring code installs its own handlers
(which keep the timed figures once they exist). The function's int return value is the exit status.
"""
import sys

from workbench.launch import procs

if __name__ == "__main__":
    procs.quiet_until_ready()
    from workbench.launch.forkserver import resolve

    result = resolve(sys.argv[1])(*sys.argv[2:])
    sys.exit(result if isinstance(result, int) else 0)
