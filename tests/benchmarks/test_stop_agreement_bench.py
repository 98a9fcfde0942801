"""benchmarks/stop_agreement.py: two real processes time the agreement (and the board's read) and see one stop at one step."""

import json

from benchmarks import stop_agreement


def test_two_processes_time_the_agreement_and_see_the_stop_together(tmp_path, capsys):
  out = tmp_path / "r.json"
  stop_agreement.main(["--steps=5", "--rounds=1", f"--out={out}"])
  r = json.loads(out.read_text())
  assert r["stop_seen_by_all"] is True and len(r["per_step_ms_median"]) == 2
  assert all(v > 0 for v in r["per_step_ms_median"] + r["board_read_ms_median"])
  assert "seen at the same step by every process: True" in capsys.readouterr().out
