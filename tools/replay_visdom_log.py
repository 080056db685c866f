"""Send a run's Visdom log (main.py --visdom-log FILE) to a Visdom server, to watch the run later.

make server                                                # one terminal
.venv/bin/python tools/replay_visdom_log.py runs/x/visdom.log  # then http://localhost:8097
"""

import argparse
import sys
from pathlib import Path

from visdom import Visdom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.commands import python_command


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log", help="the file written by main.py --visdom-log")
    parser.add_argument(
        "--server", default="http://localhost", help="Visdom server address (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8097, help="Visdom server port (default: %(default)s)"
    )
    args = parser.parse_args()
    try:
        client = Visdom(
            server=args.server, port=args.port, use_incoming_socket=False, raise_exceptions=True
        )
        client.replay_log(args.log)
    except OSError as error:
        print(
            f"error: {error}: is a server running? Start one with "
            f"`{python_command()} -m visdom.server -bind_local`",
            file=sys.stderr,
        )
        return 1
    print(f"replayed {args.log} into {args.server}:{args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
