"""Print what failed in pytest's JUnit XML reports, the last lines of each failure, so that a CI run that fails
after an hour ends with why: ``python .ci/failures.py REPORT.xml [...]``; prints nothing when all passed."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

LAST = 25  # lines of each failure's report


def failures(report: Path) -> list[tuple[str, str]]:
    """(test id, its report's last lines) for each failed or errored test case of one JUnit XML file."""
    found = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for kind in ("failure", "error"):
            for bad in case.findall(kind):
                name = f"{case.get('classname', '')}::{case.get('name', '')} ({kind}, {case.get('time', '?')} s)"
                text = (bad.text or bad.get("message") or "").rstrip().splitlines()
                found.append((name, "\n".join(text[-LAST:])))
    return found


def main(paths: list[str]) -> int:
    found = [f for p in paths if Path(p).is_file() for f in failures(Path(p))]
    if not found:
        return 0
    print(f"\n==== CI: {len(found)} failed; each one's last {LAST} lines ====")
    for name, text in found:
        print(f"\n---- {name}\n{text}")
    print("\n==== failed: " + ", ".join(name.split(" (")[0] for name, _ in found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
