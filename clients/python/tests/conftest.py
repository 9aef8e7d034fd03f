"""What the tests share: the server and database tests/python.rs started, and SQL as any writer runs it."""

import os
import subprocess

URL = os.environ["PGFEED_URL"]
DATABASE_URL = os.environ["DATABASE_URL"]
PSQL = os.environ.get("PGFEED_PSQL", "psql")


def sql(text: str) -> str:
    """Runs SQL as any writer would (psql), returns its unaligned output."""
    out = subprocess.run(
        [PSQL, DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", text],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()
