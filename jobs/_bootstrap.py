"""Make the repository root importable when a job runs as `python jobs/X.py`
(locally or under `ray job submit --working-dir .`, where the root is the cwd)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
