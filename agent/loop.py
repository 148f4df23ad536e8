"""Entry point: python3 /path/to/agent/loop.py --task /path/to/task.json

Standard library only. The `hearth_agent` package sits next to this file; see
hearth_agent/loop.py for the exit codes and hearth_agent/task.py for the task schema.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hearth_agent.loop import main as agent_main  # noqa: PLC0415 - needs the sys.path entry above

    return agent_main()


if __name__ == "__main__":
    sys.exit(main())
