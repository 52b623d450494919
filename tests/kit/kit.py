#!/usr/bin/env python3
"""The alerting and dashboard kit's checks in one run and one report (see run.sh). Each module's
main(report) runs in this process with a time limit; a crash or a timeout is a FAIL of that module.
The last line is exactly `kit: N passed, N failed` (`, N skipped` appended when something skipped).
"""

from __future__ import annotations

import importlib
import sys

import kitlib as k

MODULES = ("check_rules", "check_alertmanager", "lint_dashboards", "check_thresholds", "check_intervals", "e2e")
LIMIT_S = 240  # per module; e2e observes for ~2.5 minutes


def main() -> int:
    sections = [(name, importlib.import_module(name).main) for name in MODULES]
    return k.run_sections("kit", sections, LIMIT_S)


if __name__ == "__main__":
    sys.exit(main())
