"""Summarise a py-spy `--format raw` profile (collapsed stacks): where the samples went.

    .venv/bin/py-spy record --pid PID --subprocesses --format raw -o prof.txt --duration 10
    .venv/bin/python bench/profile_summary.py prof.txt [--top 25] [--grep bridge/]

Prints the share of samples per process state (idle or not, with `--idle` recordings), the
functions with the most samples anywhere on the stack (inclusive) and at the top (self).
`--grep` keeps only frames whose file path contains the text (e.g. `bridge/`, `rq/`).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `pkg/mod.py:func`."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{match['func']}"


def summarise(path: Path, top: int, grep: str | None, skip_idle: bool) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";")]
        # py-spy puts the process (and with --idle, nothing else) in the first frames.
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if skip_idle and frames and any(w in frames[-1] for w in ("select", "poll", "wait", "accept", "recv", "sleep")):
            continue
        total += count
        for frame in set(frames):
            if grep is None or grep in frame:
                inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    lines = [f"{total} samples{' (idle stacks left out)' if skip_idle else ''}", "", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--grep", help="only frames whose path contains this")
    parser.add_argument("--busy", action="store_true", help="leave out stacks that end waiting (select, recv, ...)")
    args = parser.parse_args()
    print(summarise(args.profile, args.top, args.grep, args.busy))


if __name__ == "__main__":
    main()
