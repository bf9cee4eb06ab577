"""Regenerate (or check) the README's "What you get" sample from a real run of its command.

The block between the ``readme-sample`` markers in README.md is what ``moa-search study run
studies/sim-demo.toml`` prints when run now, in a fresh runs folder (so the study runs from
scratch, as on a fresh checkout): the first trial lines it writes to stderr, then everything it
writes to stdout (the Pareto front and the summary lines), trailing spaces removed. The
simulated world is seeded, so the output is the same on every run of the same code; when the
CLI's output or the search changes, re-run this script.

Run: ``python scripts/readme_sample.py`` (rewrite the block) or ``--check`` (exit 1, naming the
first differing line, when the committed block is not what the command prints now).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analysis.run_all import first_difference  # noqa: E402

README = ROOT / "README.md"
COMMAND = ("study", "run", "studies/sim-demo.toml")
BEGIN = ("<!-- readme-sample: the output of a real run, written by scripts/readme_sample.py; "
         "edits here are overwritten -->")
END = "<!-- end readme-sample -->"
#: Trial lines shown before the "…" (the study prints one per trial).
TRIAL_LINES = 3


def moa_search() -> list[str]:
    """The installed ``moa-search`` beside this Python (the README's command), else the module."""
    exe = Path(sys.executable).parent / "moa-search"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "moa_search.cli"]


def sample() -> str:
    """Run the command in a fresh runs folder and shape what it printed into the README block."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # piped: 80 columns, as in a terminal
    with tempfile.TemporaryDirectory(prefix="moa-readme-sample-") as runs:
        done = subprocess.run([*moa_search(), *COMMAND, "--runs-dir", runs], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"error: `moa-search {' '.join(COMMAND)}` exited {done.returncode}: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    out = [line.rstrip() for line in done.stdout.strip("\n").splitlines()]
    trials = [line for trial in trial_lines(done.stderr)[:TRIAL_LINES] for line in trial]
    lines = [f"$ moa-search {' '.join(COMMAND)}", *trials, "…", *out]
    return "\n".join(["```", *lines, "```"])


def trial_lines(stderr: str) -> list[list[str]]:
    """The lines of each trial's progress line: at 80 columns a long one wraps, and the lines
    after it that start neither a trial nor a message (``warning: ...``) are its rest."""
    trials: list[list[str]] = []
    follows = False
    for line in stderr.splitlines():
        if line.startswith("trial "):
            trials.append([line.rstrip()])
        elif follows and line.strip() and not re.match(r"\w+: ", line):
            trials[-1].append(line.rstrip())
            continue
        follows = line.startswith("trial ")
    return trials


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        raise SystemExit(f"error: {README.name} has no {BEGIN!r} ... {END!r} block")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/readme_sample.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="compare instead of rewriting; exit 1 when the README's block differs")
    p.add_argument("--readme", type=Path, default=README, help="the README to rewrite or check")
    args = p.parse_args(argv)
    text = args.readme.read_text("utf-8")
    new = replace_block(text, sample())
    if not args.check:
        if new != text:
            args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: sample {'rewritten' if new != text else 'unchanged'}")
        return 0
    found = first_difference(text, new)
    if found is None:
        print(f"ok: {args.readme}'s sample is what `moa-search {' '.join(COMMAND)}` prints now")
        return 0
    line, committed, regenerated = found
    print(f"{args.readme}:{line}: the sample differs from what the command prints now\n"
          f"  committed:   {committed}\n  regenerated: {regenerated}\n"
          f"Rewrite it with `python scripts/readme_sample.py`.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
