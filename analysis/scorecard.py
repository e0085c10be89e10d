"""Every figure and table, optimal_lr.csv and the claims scorecard (report.md, report.html) for the
runs below the given directories: the same as `lora-lab analyze`.

    python analysis/scorecard.py runs --out runs/analysis
"""

from __future__ import annotations

import sys

from lora_lab.report import analyze_main

if __name__ == "__main__":
    sys.exit(analyze_main(sys.argv[1:]))
