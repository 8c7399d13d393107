"""`python -m workbench.run.worker_entry SPEC.json`: a stage worker that stops quietly when told to.

The ladder stops a worker's process group with SIGINT (then SIGKILL). Arriving while torch is still
being imported, that would print a long traceback from deep inside torch; here the signals end the
process at once with 128 + the signal's number, silently, until the worker installs its own
handlers (which keep the timed figures once they exist).
"""
import signal
import sys


def _quiet_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _quiet_exit)
    from workbench.run import worker

    sys.exit(worker.main(sys.argv[1]))
