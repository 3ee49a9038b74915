"""Where doppel's non-Python sources live (sql/, expectations/) in a source checkout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = ROOT / "sql"
EXPECTATIONS_DIR = ROOT / "expectations"


def sql_text(relative: str) -> str:
    """The text of sql/<relative> (e.g. "queries/test_users.sql")."""
    path = SQL_DIR / relative
    if not path.exists():
        raise FileNotFoundError(f"missing SQL file {path} (is doppel installed from a source checkout?)")
    return path.read_text()
