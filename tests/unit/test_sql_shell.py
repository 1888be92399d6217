"""`errata sql` with no query is an interactive shell (read from stdin, statements end with ';')."""
import subprocess
import sys
from pathlib import Path

from pipelines.build import build


def test_shell_answers_and_refuses_writes(fake_recipe, data_root):
    build(fake_recipe(n=2, n_samples=2), progress=False)
    exe = Path(sys.executable).parent / "errata"
    p = subprocess.run([str(exe), "--data", str(data_root), "sql"], text=True, capture_output=True, timeout=120,
                       input="SELECT count(*) * 1000 + 7 AS n\nFROM fake.attempts;\nDELETE FROM fake.attempts;\nSELECT 41 + 1 AS x;\n")
    assert p.returncode == 0, p.stderr
    assert "errata sql" in p.stdout and "4007" in p.stdout  # 4 attempts, over a statement split across lines
    assert "read-only" in p.stdout and "42" in p.stdout
