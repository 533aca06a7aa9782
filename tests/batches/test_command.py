"""``manage.py batch submit`` and ``batch watch`` against a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.batches.conftest import chat_line
from tests.live import REPO, database_url_for_tests


def test_it_submits_and_watches_a_batch_from_the_terminal(world, workers, tmp_path):
    workers().start()
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(chat_line(f"c{n}", f"Prompt {n}")) + "\n" for n in range(8)))
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "SWITCHYARD_API_KEY": world.key_a,
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}  # where the tests' worker listens
    submitted = subprocess.run([sys.executable, "manage.py", "batch", "submit", str(path), "--watch"], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    batch_id, summary = submitted.stdout.strip().splitlines()
    assert batch_id.startswith("batch_")
    summary = json.loads(summary)
    assert summary["status"] == "completed" and summary["completed"] == 8 and summary["output_file_id"]
    assert "[##############################] 100.0% 8/8 (0 failed) completed" in submitted.stderr

    watched = subprocess.run([sys.executable, "manage.py", "batch", "watch", batch_id, "--key", world.key_b],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert watched.returncode != 0 and "No such batch" in watched.stderr  # another tenant's key
