"""`lora-lab analyze`: from run directories to the paper's figures, tables and the claims scorecard.

    lora-lab analyze runs/                     # every experiment below runs/, report in runs/analysis/
    lora-lab analyze runs/tiny/rank --out /tmp/a
    lora-lab analyze tiny/rank tiny/batch      # experiment names: looked up under --root (default runs/)

Python: `analyze(paths, out) -> dict` (what was written and the verdicts). Each experiment is
analysed by its kind, read off the basename of its name `<scale>/<figure>`: rank curves and LR
U-curves (C1, C2, and the step times of C6, and the early curves of C7 at one of their LRs), batch
size (C3), layer placement (C4), RL (C5), early curves (C7), invariance (C8) and capacity (C9);
beyond the paper, unjudged, the LR ratio against width and alpha convention (lora_lab/ladder.py).
Its runs' `run.analysis` (config.yaml) may name the kinds instead (`run.analysis=[rank]`: an
experiment named anything analysed, and judged, as tiny/rank is). An experiment of no kind
(`default`, `mine/lr_sweep`) is analysed by what varies among its runs (lora_lab/explore.py): LR
U-curves and optima per group, min-over-LR curves per value of each other key, seed bands; shown in
the report, judged by no claim. The analysis is one chain, each module importing
only those before it: lora_lab/results.py (run directories -> tables), noise.py (the noise yardstick), curves.py (the maths),
figures.py, records.py, explore.py, ladder.py and sections.py (one experiment's figures, tables and record), claims.py
(the rules C1..C9) and this module, which writes report.md (figures linked), a self-contained
report.html (figures embedded), verdicts.csv, optimal_lr.csv and runs.csv. `script_main` is the
command line of the scripts in analysis/.

Conventions (also stated in the report):
- A run's final loss is its mean train loss over the last 10% of its steps (lora_lab/results.py);
  a diverged run's is +inf at its LR; failed and unfinished runs are left out and counted.
- Runs that differ only in train.seed are replicates: shown as their mean with a +-1 SE band.
- Curves are smoothed with a trailing mean over 5% of the run's steps before any minimum is taken.
- Each claim is printed as its rule and thresholds, the noise floor (the seed-to-seed SE of the
  paired difference it compares, or with one seed the within-run scatter), the number, the verdict.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

from lora_lab.claims import CLAIMS, MIN_SEEDS, SINGLE, Verdict, fmt, judge, tolerance_text
from lora_lab.curves import EXPLORE, SMOOTH, analyses_of, experiments_of
from lora_lab.ladder import KINDS as LADDER_KINDS
from lora_lab.ladder import alpha_summary, width_summary
from lora_lab.noise import GAP_WINDOW, K_SE, MIN_GAP, SINGLE_SEED
from lora_lab.results import FINAL_WINDOW, STATUSES, Results, ResultsError, load_results, seed_of
from lora_lab.sections import Section, analyze_experiment, run_sections

# ----------------------------------------------------------------------------- rendering


def md_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    """A markdown table of a DataFrame (numbers to 4 significant digits)."""
    if df is None or not len(df):
        return "_(empty)_\n"
    df = df.head(max_rows)

    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return fmt(float(v), 4)
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _provenance(res: Results) -> str:
    r = res.runs
    hosts = sorted({str(h) for h in r.get("meta.host", pd.Series(dtype=object)).dropna()})
    devices = sorted({str(d) for d in r.get("meta.device_name", pd.Series(dtype=object)).dropna()})
    commits = sorted({str(c)[:10] for c in r.get("meta.git_commit", pd.Series(dtype=object)).dropna()})
    return (f"hosts: {', '.join(hosts) or 'unknown'}; devices: {', '.join(devices) or 'unknown'}; "
            f"code: {', '.join(commits) or 'unknown'}")


def _cell(text: str) -> str:
    """Text for a markdown table cell (a pipe escaped, on one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(res: Results, sections: list[Section], verdicts: dict[str, list[Verdict]], out: Path) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    counts = res.counts()
    lines = ["# LoRA Without Regret: claims scorecard\n",
             f"Generated {now} by `lora-lab analyze` from {len(res.runs)} run directories ({_provenance(res)}).\n",
             "## Scorecard\n",
             ("Each row: the rule and its thresholds (fixed before the data), the noise floor the number is judged "
              "against, the number, the verdict.\n"),
             "| claim | paper | rule | noise floor | measured | verdict |", "|---|---|---|---|---|---|"]
    by_id = {c.id: c for c in CLAIMS}
    for cid, vs in verdicts.items():
        for v in vs:
            where = f" ({v.experiment})" if v.experiment else ""
            lines.append(f"| {cid}{where} | {_cell(by_id[cid].paper)} | {_cell(v.rule)} | {_cell(v.noise)} | "
                         f"{_cell(v.measured)} | **{v.verdict}** |")
    lines += ["", "## Runs\n",
              ("Failed and unfinished runs are left out of every figure and table; a diverged run counts as infinitely "
               "bad at its LR.\n"), md_table(counts), _seeds_line(res)]
    failed = res.runs[res.runs["status"] == "failed"]
    if len(failed):
        lines.append("Failed runs:\n")
        lines += [f"- `{r['experiment']}/{r['run_id']}`: {str(r.get('error') or 'no error text').splitlines()[0][:200]}"
                  for _, r in failed.head(30).iterrows()]
        lines.append("")
    lines += ["## Conventions\n",
              f"- Final loss: mean train loss over the last {FINAL_WINDOW:.0%} of a run's steps (one epoch: the batches are unseen).",
              ("- Seeds: runs that differ only in `train.seed` (the LoRA init and the data order) are replicates; curves, "
               "final losses and U-curves are their mean, drawn with a band of +-1 standard error across seeds."),
              f"- Curves: trailing mean over {SMOOTH:.0%} of the steps before a minimum over LRs is taken.",
              ("- Noise floor: every comparison is seed-matched (LoRA and FullFT runs of one seed see the same batches); its "
               "noise floor is the standard error of the paired difference across seeds. With one seed the scatter of the "
               f"paired difference within the run stands in (labelled '{SINGLE_SEED}'); it cannot see what the seed "
               f"changes, so a comparison claim on fewer than {MIN_SEEDS} seeds is at most '{SINGLE}'."),
              (f"- A difference counts when it exceeds {K_SE:g} standard errors (and {MIN_GAP:g} nats); C1 judges the mean "
               f"gap over the last {GAP_WINDOW:.0%} of the steps; 'as good as' margins are stated per claim "
               f"({tolerance_text()} for losses)."),
              ("- Optimal LR: parabola in log10(LR) through the best grid point and its neighbours, on the seed means; 90% "
               "interval from their standard errors (across seeds, or over the final window); at a grid edge the best "
               "grid LR with the interval open on that side, and any verdict resting on it is inconclusive."), ""]
    for c in CLAIMS:
        lines += [f"## {c.id}: {c.statement}\n", f"- Paper: {c.paper}.", f"- Rule: {c.rule}",
                  f"- Thresholds: {c.thresholds}.", ""]
        for v in verdicts[c.id]:
            lines.append(f"### {v.experiment or 'not run'}\n")
            lines.append(f"Noise floor: {v.noise}.\n")
            lines.append(f"Measured: {v.measured}.\n")
            lines.append(f"Verdict: **{v.verdict}**\n")
            if v.how:
                lines.append(f"How: {v.how}\n")
            sec = next((s for s in sections if s.experiment == v.experiment and s.kind in c.kinds), None)
            if sec is None:
                continue
            for name, png in sec.figures.items():
                if name in _CLAIM_FIGURES.get(c.id, ()):
                    cap = sec.captions.get(name, "")
                    lines.append(f"![{name}]({png.relative_to(out).as_posix()})\n")
                    if cap:
                        lines.append(f"_{cap}_\n")
            for name in _CLAIM_TABLES.get(c.id, ()):
                if name in sec.tables:
                    lines += [f"`{name}.csv`:\n", md_table(sec.tables[name].drop(columns=["experiment"], errors="ignore"))]
    lines += _beyond(sections, out)
    lines += _explored(sections, out)
    other = [s for s in sections if s.kind is None
             or (s.notes and s.record is None and s.kind != EXPLORE and s.kind not in LADDER_KINDS)]
    if other:
        lines.append("## Other experiments\n")
        lines += [f"- `{s.experiment}`: {'; '.join(s.notes)}" for s in other]
    return "\n".join(lines) + "\n"


# The figures and tables of the width and alpha kinds that the report shows (all are in their directories).
_LADDER_FIGURES = {"width": ("lr_vs_width", "ratio_vs_width"), "alpha": ("lr_vs_rank_by_alpha",)}
_LADDER_TABLES = {"width": ("width_fit", "width_ratios", "width_ratio_fit"), "alpha": ("alpha_slopes", "alpha_ratios")}


def _beyond(sections: list[Section], out: Path) -> list[str]:
    """The report's part on the width and alpha experiments (lora_lab/ladder.py): the fitted
    exponents and slopes with their intervals, the ratio per width and per convention, what they
    imply at hidden 4096 (an extrapolation), the figures; nothing judged. Empty without them."""
    ladder = [s for s in sections if s.kind in LADDER_KINDS]
    if not ladder:
        return []
    lines = ["## Beyond the paper: how the LoRA/FullFT LR ratio moves with width and alpha\n",
             ("Not a claim of the paper and not judged: the optimal LR of each arm is fitted as above (seed means, 90% "
              "interval); optima at an open edge of the LR grid are bounds and are left out of every fit. Exponents and "
              "slopes are straight lines in log-log, weighted by the optima's intervals.\n")]
    for s in sorted(ladder, key=lambda s: (LADDER_KINDS.index(s.kind), s.experiment)):
        lines.append(f"### {s.experiment}\n")
        if s.error is None:
            lines += [f"{text}\n" for text in (width_summary(s) if s.kind == "width" else alpha_summary(s))]
        for name in _LADDER_FIGURES[s.kind]:
            if name in s.figures:
                lines.append(f"![{name}]({s.figures[name].relative_to(out).as_posix()})\n")
                if s.captions.get(name):
                    lines.append(f"_{s.captions[name]}_\n")
        for name in _LADDER_TABLES[s.kind]:
            if name in s.tables and len(s.tables[name]):
                lines += [f"`{name}.csv`:\n", md_table(s.tables[name].drop(columns=["experiment", "curve", "level"],
                                                                              errors="ignore"))]
        lines += [f"- {note}" for note in s.notes] + ([""] if s.notes else [])
    return lines


# The tables of an experiment analysed by what varies that the report shows (all are in its directory).
_EXPLORE_TABLES = ("optimal_lr", "lr_ratios", "optimal_lr_rl")


def _explored(sections: list[Section], out: Path) -> list[str]:
    """The report's part on experiments analysed by what varies (lora_lab/explore.py): per experiment,
    what varies, its figures and its optimal LRs; nothing judged."""
    explored = [s for s in sections if s.kind == EXPLORE]
    if not explored:
        return []
    lines = ["## Experiments analysed by what varies\n",
             ("No claim is judged on these: each is drawn by the config keys that differ among its runs (a group is the "
              "runs equal in all but `optim.lr` and `train.seed`; the seeds averaged with a +-1 SE band, the optimal LR "
              "of each group run at two or more LRs fitted as above). `run.analysis` names a kind to analyse an "
              "experiment as instead.\n")]
    for s in explored:
        lines.append(f"### {s.experiment}\n")
        varies = s.tables.get("varies")
        if varies is not None and len(varies):
            lines.append("What varies: " + "; ".join(f"`{k}` ({v})" for k, v in zip(varies["key"], varies["values"])) + ".\n")
        else:
            lines.append("Nothing varies among its runs.\n")
        for name, png in s.figures.items():
            lines.append(f"![{name}]({png.relative_to(out).as_posix()})\n")
            if s.captions.get(name):
                lines.append(f"_{s.captions[name]}_\n")
        for name in _EXPLORE_TABLES:
            if name in s.tables and len(s.tables[name]):
                lines += [f"`{name}.csv`:\n", md_table(s.tables[name].drop(columns=["experiment"], errors="ignore"))]
        lines += [f"- {note}" for note in s.notes] + ([""] if s.notes else [])
    return lines


def _seeds_line(res: Results) -> str:
    """Seeds per experiment, as a sentence for the report."""
    plotted = res.plotted()
    if not len(plotted):
        return ""
    seeds = plotted.assign(seed=seed_of(plotted)).groupby("experiment")["seed"].nunique()
    return "Seeds per experiment: " + ", ".join(f"{e} {n}" for e, n in seeds.items()) + ".\n"


_CLAIM_FIGURES = {"C1": ("rank_curves",), "C2": ("lr_ucurves", "lr_ratio_vs_steps"), "C3": ("batch_curves", "batch_final"),
                  "C4": ("layers_curves", "layers_lr"), "C5": ("rl_lr", "rl_curves"), "C7": ("early_curves",),
                  "C8": ("invariance",), "C9": ("capacity",)}
_CLAIM_TABLES = {"C1": ("departures",), "C2": ("optimal_lr", "lr_ratios", "lr_ratio_vs_steps"), "C3": ("batch_penalty",),
                 "C4": ("layers_best",), "C5": ("optimal_lr_rl", "paired_outcomes"), "C6": ("step_time",), "C7": ("early_differences",), "C8": ("invariance",),
                 "C9": ("capacity",)}

_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}code{background:#f5f5f5;padding:0 3px}
.reproduced{color:#1a7f37}.not-reproduced{color:#c62828}.inconclusive{color:#9a6700}.not-run{color:#777}"""


def render_html(markdown: str, out: Path) -> str:
    """report.md as one HTML file with its PNG figures embedded as data URIs (no external file)."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)

    def embed(m: re.Match) -> str:
        path = out / html.unescape(m.group(1))
        if not path.is_file():
            return m.group(0)
        return 'src="data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode() + '"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    body = re.sub(r"<strong>(reproduced|not reproduced|inconclusive(?: \(single seed\))?|not run)</strong>",
                  lambda m: f'<strong class="{m.group(1).split(" (")[0].replace(" ", "-")}">{m.group(1)}</strong>', body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lora-lab claims scorecard</title>"
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")


def write_report(res: Results, sections: list[Section], out: Path) -> tuple[list[Path], dict[str, list[dict]]]:
    """Write report.md, report.html and verdicts.csv to `out`; returns (paths, verdicts as dicts)."""
    verdicts = judge(sections)
    md = render_markdown(res, sections, verdicts, Path(out))
    paths = [Path(out) / "report.md", Path(out) / "report.html", Path(out) / "verdicts.csv"]
    paths[0].write_text(md)
    paths[1].write_text(render_html(md, Path(out)))
    flat = [asdict(v) for vs in verdicts.values() for v in vs]
    pd.DataFrame(flat).to_csv(paths[2], index=False)
    return paths, {cid: [asdict(v) for v in vs] for cid, vs in verdicts.items()}


# ----------------------------------------------------------------------------- entry points


def analyze(paths: list[Path], out: Path, progress: bool = True) -> dict:
    """Figures (PNG and PDF), tables (CSV), optimal_lr.csv and the scorecard (report.md, report.html)
    for every experiment found below `paths`, written to `out`.

    Returns {"out", "files": [paths written], "verdicts": {claim id: [verdict dicts]},
    "counts": runs per experiment and status (list of dicts)}. Raises ResultsError when the paths hold
    no run directory."""

    def say(msg: str) -> None:
        if progress:
            print(f"analyze: {msg}", file=sys.stderr, flush=True)

    res = load_results(paths)
    if not len(res.runs):
        raise ResultsError(f"{', '.join(map(str, paths))}: no run directories (directories with a config.yaml) found")
    counts = res.counts()
    say(f"{len(res.runs)} runs in {len(counts)} experiments ({', '.join(f'{(res.runs.status == s).sum()} {s}' for s in STATUSES)})")
    for error in res.runs.loc[res.runs["status"] == "corrupt", "error"]:
        # Always said, also with --quiet: a damaged run is left out of every figure.
        print(f"analyze: left out, corrupt: {error}", file=sys.stderr, flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = run_sections(res, out, say)
    files = [f for s in sections for f in s.files]
    optimal, taken = [], set()
    for s in sorted(sections, key=lambda s: s.kind == EXPLORE):  # one table per experiment, its claimed kind's first
        if "optimal_lr" in s.tables and len(s.tables["optimal_lr"]) and s.experiment not in taken:
            optimal.append(s.tables["optimal_lr"])
            taken.add(s.experiment)
    if optimal:
        path = out / "optimal_lr.csv"
        pd.concat(optimal, ignore_index=True).to_csv(path, index=False)
        files.append(path)
    counts_path = out / "runs.csv"
    counts.to_csv(counts_path, index=False)
    files.append(counts_path)
    written, verdicts = write_report(res, sections, out)
    files += written
    say(f"wrote {len(files)} files to {out}; scorecard: {out / 'report.md'}")
    return {"out": out, "files": files, "verdicts": verdicts, "counts": counts.to_dict("records")}


def _resolve(paths: list[str], root: str) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists() and (Path(root) / p).exists():
            path = Path(root) / p  # an experiment name such as tiny/rank
        if not path.exists():
            raise ResultsError(f"{p}: no such directory (nor {Path(root) / p}); give a runs directory, an "
                               "experiment directory or an experiment name under --root")
        out.append(path)
    return out


def analyze_main(argv: list[str]) -> int:
    """`lora-lab analyze <runs dir or experiment ...> [--out DIR] [--root DIR]`."""
    p = argparse.ArgumentParser(prog="lora-lab analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="runs directories, experiment directories, run directories or experiment names")
    p.add_argument("--out", help="output directory (default: <first path>/analysis)")
    p.add_argument("--root", default="runs", help="where experiment names are looked up (run.root; default runs)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    try:
        paths = _resolve(args.paths, args.root)
        out = Path(args.out) if args.out else paths[0] / "analysis"
        result = analyze(paths, out, progress=not args.quiet)
    except ResultsError as exc:
        print(f"lora-lab analyze: {exc}", file=sys.stderr)
        return 2
    print(verdict_table(result["verdicts"]))
    return 0


def verdict_table(verdicts: dict[str, list[dict]]) -> str:
    """The scorecard in plain text, one line per claim and experiment: claim, verdict, experiment,
    what was measured (what `lora-lab analyze` and `lora-lab reproduce` print at the end)."""
    return "\n".join(f"{claim:<4}{v['verdict']:<28}{v.get('experiment') or '-':<28}{v['measured']}"
                     for claim, vs in verdicts.items() for v in vs)


def script_setup(doc: str, kind: str | tuple[str, ...], argv: list[str] | None = None) -> tuple[Results, Path, list[str]]:
    """Command line of a script in analysis/: `<paths ...> [--out DIR]` -> (results, out, the
    experiments of `kind`, or of any of several kinds). Exits with status 2 and one line when there
    is nothing to analyse."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="runs directories, experiment directories or run directories")
    p.add_argument("--out", default="figures", help="output directory (default: figures)")
    args = p.parse_args(argv)
    try:
        res = load_results(args.paths)
    except ResultsError as exc:
        p.exit(2, f"{p.prog}: {exc}\n")
    kinds = (kind,) if isinstance(kind, str) else kind
    exps = sorted(e for k in kinds for e in experiments_of(res, k))
    if not exps:
        p.exit(2, f"{p.prog}: no experiment of kind {'/'.join(kinds)} (names <scale>/{kinds[0]}...) among {len(res.runs)} "
                  f"runs under {', '.join(args.paths)}\n")
    return res, Path(args.out), exps


def script_main(doc: str, kind: str | tuple[str, ...], tables: Sequence[str] = (), argv: list[str] | None = None,
                each: Callable[[Results, str, Path], None] | None = None) -> int:
    """A script of analysis/: for each experiment of `kind` under the paths on the command line, its
    section (figures and tables under --out), the files written, the named tables and the notes; or
    `each(results, experiment, out)` for a script that draws only part of a section."""
    res, out, experiments = script_setup(doc, kind, argv)
    kinds = (kind,) if isinstance(kind, str) else kind
    for exp in experiments:
        if each is not None:
            each(res, exp, out)
            continue
        sec = analyze_experiment(res, exp, out, next(k for k in analyses_of(res.of(exp).runs, exp) if k in kinds))
        print(f"{exp}: wrote {', '.join(str(p) for p in sec.files)}")
        for name in tables:
            if name in sec.tables:
                print(sec.tables[name].to_string(index=False))
        for note in sec.notes:
            print(f"{exp}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(analyze_main(sys.argv[1:]))
