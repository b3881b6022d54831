"""Gather Hydra multiruns into one table (see :mod:`tiger.results`).

python scripts/gather_results.py outputs/nyud_table3/multiruns/<date>
python scripts/gather_results.py outputs/study_*/multiruns/* --json study.json --markdown study.md
"""

from tiger.results import main

if __name__ == "__main__":
    main()
