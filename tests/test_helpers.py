"""tests/helpers.BackgroundRun: a low-priority run in the test session's session, its failure reported."""

import os

import pytest

from tests.helpers import BACKGROUND_NICENESS, BackgroundRun


def test_background_run_is_niced_in_pytests_session_and_reports_its_failure():
  run = BackgroundRun(["--config=configs/no_such_config.py"])  # exits 2 within a second
  try:
    pid = run.proc.pid
    # Checked at once (until it is waited for, an exited child still answers): its own process
    # group (stop() kills the group), pytest's session (where its niceness counts), niced.
    assert os.getpgid(pid) == pid and os.getsid(pid) == os.getsid(0)
    assert os.getpriority(os.PRIO_PROCESS, pid) == BACKGROUND_NICENESS
    with pytest.raises(AssertionError, match="exited with 2"):
      run.wait(timeout=120)
  finally:
    run.stop()
  assert not os.path.exists(run.root)
