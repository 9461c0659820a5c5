"""``python -m acl_bundle``: the ``acl-bundle`` command line."""
from __future__ import annotations

import sys

from acl_bundle.cli import main

if __name__ == "__main__":
    sys.exit(main())
