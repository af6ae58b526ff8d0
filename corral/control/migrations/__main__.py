"""`python -m corral.control.migrations "what changed" [DATABASE_URL]`: write a new revision (`make migration`)."""

import sys

from corral.control.migrations import revision

if len(sys.argv) < 2:
    sys.exit('usage: python -m corral.control.migrations "what changed" [DATABASE_URL]')
revision(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
