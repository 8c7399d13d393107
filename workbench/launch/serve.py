"""`python -m workbench.launch.serve REQUEST_FD ANSWER_FD [MODULE...]`: the fork server process
(launch/forkserver.py). Its own module, so the package's import of forkserver is not run twice."""
import sys

from workbench.launch.forkserver import serve

if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
