import os
import sys

# `python -m aelab` puts the current folder first on the import path (the console script does not): a module planted
# there (say, beside a run folder's model.json) must never be importable by name. What aelab needs is imported already
# or is found through the package; PYTHONPATH entries the user set stay.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli import main  # noqa: E402

raise SystemExit(main())
