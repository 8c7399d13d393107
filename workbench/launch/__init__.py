"""How a measurement runs: one protocol, `launcher.run(request) -> Outcome`, in this process, a fresh
interpreter, a child of the warm fork server or torchrun's processes (launchers.py); the typed
messages that cross the boundary (messages.py) and the channel they travel by (channel.py); one way
to start and stop a process group (procs.py). No torch here: the child is named, not imported.
"""
from workbench.launch.launchers import Launcher, Outcome, choose, failure_text  # noqa: F401
from workbench.launch.messages import RoundSpec, SideReport, SideSpec  # noqa: F401
