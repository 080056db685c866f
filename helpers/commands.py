"""The commands the program prints for the user to run (a resume, a server), each runnable as
printed from the current folder: this interpreter, main.py's path. No torch: --help uses them.
"""

import os
import shlex
import shutil
import sys


def python_command() -> str:
    """How to call this interpreter from here: `python` when that is it, else its path, quoted
    for a shell."""
    if shutil.which("python") == sys.executable:
        return "python"
    relative = os.path.relpath(sys.executable)
    return shlex.quote(relative if not relative.startswith("..") else sys.executable)


def main_command() -> str:
    """The command that runs main.py from the current folder with this interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # helpers/..
    script = os.path.relpath(os.path.join(root, "main.py"))
    return f"{python_command()} {shlex.quote(script)}"
