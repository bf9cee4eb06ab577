"""Committed numbers stay true: each number the repository quotes is regenerated and compared,
or checked against a regenerated value, or says which command produced it and when.

* ``analysis/``: ``python analysis/run_all.py --check`` regenerates the four simulated analyses
  (and the README tables they write) from an empty call store and a fresh study run, and must
  find the committed files identical; an edited committed number must make it fail, naming the
  file and line. The real-model ``local/`` analysis is checked for consistency only.
* README.md's "What you get" block: ``python scripts/readme_sample.py --check`` re-runs the
  command it shows.
* ``studies/cheapest-gpt4t.toml``: the dollars its comment quotes are re-measured.
* Prose numbers in analysis/README.md must be in what the analyses wrote, and benchmark figures
  in README.md and the study files must name their command and date.

These run real subprocesses on real files (the whole of ``--check`` takes about half a minute on
2 cores), never writing to the committed files: edits go to copies in a temporary folder.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `analysis` is a folder of scripts beside the package, not installed
    sys.path.insert(0, str(ROOT))

from analysis import budget, depth, diversity, roles  # noqa: E402
from analysis.common import readme_markers  # noqa: E402
from moa_search.study import run_study_file  # noqa: E402

ANALYSIS = ROOT / "analysis"
README = ROOT / "README.md"
SLOW = pytest.mark.timeout(900)


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run_all.py --check`` on the real committed folder; the regenerated files are kept."""
    kept = tmp_path_factory.mktemp("regenerated") / "analysis"
    done = run("analysis/run_all.py", "--check", "--keep", str(kept), "-q")
    assert done.returncode == 0, (
        "the committed analyses are not what the code writes now; regenerate them with "
        "`python analysis/run_all.py` (after deleting runs/sim-demo/):\n"
        + done.stdout + done.stderr)
    assert done.stdout.splitlines()[-1].startswith("ok: the ")
    return kept


# ---- analysis/: --check -------------------------------------------------------------------

@SLOW
def test_committed_analyses_are_what_the_code_writes_now(regenerated: Path) -> None:
    for module in (diversity, depth, roles, budget):
        for name in (f"{module.NAME}.html", "summary.md", "results.json"):
            assert (regenerated / module.NAME / name).read_bytes() == \
                (ANALYSIS / module.NAME / name).read_bytes()
    # the README's generated blocks were rewritten in the regenerated copy, and match
    readme = (ANALYSIS / "README.md").read_text("utf-8")
    assert (regenerated / "README.md").read_text("utf-8") == readme


def _edit(path: Path, old: str, new: str) -> int:
    """Replace the first ``old`` in ``path`` (a copy) with ``new``; the 1-based line number."""
    text = path.read_text("utf-8")
    at = text.index(old)
    path.write_text(text[:at] + new + text[at + len(old):], encoding="utf-8")
    return text[:at].count("\n") + 1


@SLOW
def test_check_fails_on_an_edited_committed_number_and_names_file_and_line(
        regenerated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "committed"
    shutil.copytree(ANALYSIS, copy, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    m = json.loads((copy / "depth" / "results.json").read_text("utf-8"))["layers"][0]
    summary_line = _edit(copy / "depth" / "summary.md", m["config"] + " | " + f"{m['quality']:.1f}",
                         m["config"] + " | " + f"{m['quality'] + 0.1:.1f}")
    json_line = _edit(copy / "budget" / "results.json", '"quality": ', '"quality": 1')
    edited = [f"{copy / 'depth' / 'summary.md'}:{summary_line}:",
              f"{copy / 'budget' / 'results.json'}:{json_line}:"]
    local = copy / "local" / "summary.md"
    if (copy / "local" / "results.json").is_file():  # real-model results: consistency only
        edited.append(f"{local}:{_edit(local, '.', ',')}:")
    done = run("analysis/run_all.py", "--check", "--against", str(copy), "--regenerated",
               str(regenerated), "-q")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    for where in edited:
        assert where in out, out
    assert f"{len(edited)} committed file(s) differ" in out
    assert "committed:   " in out and "regenerated: " in out
    # an untouched copy passes: the failure came from the edits alone
    clean = tmp_path / "clean"
    shutil.copytree(ANALYSIS, clean, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    done = run("analysis/run_all.py", "--check", "--against", str(clean), "--regenerated",
               str(regenerated), "-q")
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_refuses_options_that_change_the_outputs(tmp_path: Path) -> None:
    done = run("analysis/run_all.py", "--check", "--n-items", "8", timeout=120)
    assert done.returncode == 2 and "drop --n-items" in done.stderr.splitlines()[-1]
    done = run("analysis/run_all.py", "--keep", str(tmp_path), timeout=120)
    assert done.returncode == 2 and "--keep goes with --check" in done.stderr


# ---- README.md's sample output --------------------------------------------------------------

@SLOW
def test_readme_sample_is_what_its_command_prints(tmp_path: Path) -> None:
    done = run("scripts/readme_sample.py", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    # and a stale sample is caught, naming the line
    copy = tmp_path / "README.md"
    shutil.copy(README, copy)
    text = copy.read_text("utf-8")
    row = re.search(r"^ +0 single .*$", text, re.MULTILINE)  # trial 0's row of the Pareto front
    assert row is not None, "the sample shows the Pareto front's rows"
    line = _edit(copy, row.group(0), row.group(0).replace(" 0 ", " 9 ", 1))
    done = run("scripts/readme_sample.py", "--check", "--readme", str(copy))
    assert done.returncode == 1 and f"{copy}:{line}:" in done.stdout


# ---- studies/cheapest-gpt4t.toml's comment ----------------------------------------------------

@SLOW
def test_cheapest_first_and_tpe_spend_what_the_study_comment_says(tmp_path: Path) -> None:
    source = ROOT / "studies" / "cheapest-gpt4t.toml"
    text = source.read_text("utf-8")
    quoted = re.search(r'this walk spends \$([\d.]+) where TPE \(name = "tpe"\) spends \$([\d.]+) '
                       r"of the \$(\d+)\s+#\s+budget and finds the same config", text)
    assert quoted is not None, "the comment's sentence changed: update this test with it"
    sim = text.replace('backend = "http"', 'backend = "sim"', 1)
    tpe = re.sub(r'name = "cheapest-first"\noptions = .*\n', 'name = "tpe"\n', sim)
    assert tpe != sim
    results = []
    for name, body in (("walk", sim), ("tpe", tpe)):
        path = tmp_path / f"{name}.toml"
        path.write_text(body, encoding="utf-8")
        results.append(run_study_file(path, runs_dir=tmp_path / name))
    walk, by_tpe = results
    assert (f"{walk.spent_usd:.2f}", f"{by_tpe.spent_usd:.2f}") == quoted.group(1, 2)
    assert float(quoted.group(3)) == 25.0 and by_tpe.spent_usd <= 25.0
    found = [r.cheapest_meeting_target() for r in results]
    assert all(f.met and f.record is not None and f.record.config is not None for f in found)
    assert found[0].record.config == found[1].record.config  # type: ignore[union-attr]


# ---- prose numbers and benchmark figures ------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+(?:e[-+]\d+)?)(?![\w.×])")
MEASURED = re.compile(r"(measured|Measured)[^.]*? on \d{4}-\d{2}-\d{2}")


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.:])\s+(?=[A-Z*(`])", text)


def _section(text: str, title: str) -> str:
    start = text.index(title)
    following = re.search(r"^#{2,3} ", text[start + len(title):], re.MULTILINE)
    return text[start:start + len(title) + following.start()] if following else text[start:]


def test_analysis_readme_prose_quotes_only_numbers_the_analyses_wrote() -> None:
    """Every decimal in the prose about an analysis is in that analysis's summary.md or its
    generated block (ratios written `~4.5×` aside), or its sentence says what measured it and
    when; the paper's numbers come from the analyses' own constants."""
    text = (ANALYSIS / "README.md").read_text("utf-8")
    paper = {f"{v:.1f}" for v in (*diversity.PAPER_DIFFERENT.values(),
                                  *diversity.PAPER_SAME.values(), *budget.PAPER_LC.values())}
    sections = {"### diversity": "diversity", "### depth": "depth", "### roles": "roles",
                "### budget": "budget", "## The simulated-world caveat": "budget"}
    for title, name in sections.items():
        section = _section(text, title)
        begin, end = readme_markers(name)
        block = section.split(begin, 1)[1].split(end, 1)[0] if begin in section else ""
        prose = section.replace(block, "")
        allowed = set(NUMBER.findall(block + (ANALYSIS / name / "summary.md").read_text("utf-8")))
        for sentence in _sentences(prose):
            if MEASURED.search(sentence):
                continue
            unknown = set(NUMBER.findall(sentence)) - allowed - paper
            assert not unknown, f"analysis/README.md, {title}: {sorted(unknown)} in {sentence!r}"


def test_analysis_readme_file_sizes_are_the_committed_ones() -> None:
    text = (ANALYSIS / "README.md").read_text("utf-8")
    plotly_mb = (ANALYSIS / "plotly.min.js").stat().st_size / 1e6
    assert f"`analysis/plotly.min.js` ({plotly_mb:.1f} MB" in text
    sizes = [(ANALYSIS / m.NAME / f"{m.NAME}.html").stat().st_size
             for m in (diversity, depth, roles, budget)]
    quoted = re.search(r"each of the four is (\d+)–(\d+) KB", text)
    assert quoted is not None
    low, high = quoted.groups()
    assert int(low) * 1000 <= min(sizes) and max(sizes) < (int(high) + 1) * 1000


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _toml_comment_blocks(text: str) -> list[str]:
    blocks, current = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks + (["\n".join(current)] if current else [])


def test_benchmark_figures_say_which_command_measured_them_and_when() -> None:
    """A README paragraph or study-file comment quoting a benchmark's numbers (decimals or
    percentages) names the command and the date, or says which test checks it."""
    texts = _paragraphs(README.read_text("utf-8"))
    for study in ("sim-demo.toml", "diversity.toml", "cheapest-gpt4t.toml"):
        texts += _toml_comment_blocks((ROOT / "studies" / study).read_text("utf-8"))
    quoting = [t for t in texts if "benchmarks/" in t and re.search(r"\d+\.\d+|\d+ ?%", t)]
    assert len(quoting) >= 3  # search_efficiency in README and sim-demo.toml, local_bench
    for t in quoting:
        assert re.search(r"python benchmarks/\w+\.py`? on \d{4}-\d{2}-\d{2}", t), t
