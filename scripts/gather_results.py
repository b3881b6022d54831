"""Gather Hydra multiruns into one table (see :mod:`tiger.analysis.results`).

python scripts/gather_results.py outputs/nyud_table3/multiruns/<date>
python scripts/gather_results.py outputs/study_*/multiruns/* --json study.json --markdown study.md
"""

from tiger.analysis.results import main

if __name__ == "__main__":
    main()
