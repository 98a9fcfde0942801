"""A workdir that is not one folder every host sees: each process stops with one line, exit 2."""

from __future__ import annotations

import copy
import os
import shutil

import jax
import pytest

from sadm_jax import distributed, main as main_lib
from tests.evaluate.conftest import copy_data, threshold_only


def _as_process(monkeypatch, index: int, count: int = 2) -> None:
  """This process as process `index` of `count`, every other process succeeding at each step
  (and, looking up its share of the stored results before a pass, finding what this one finds
  in its workdir)."""
  from sadm_jax.evaluate import execute
  monkeypatch.setattr(jax, "process_count", lambda: count)
  monkeypatch.setattr(jax, "process_index", lambda: index)
  monkeypatch.setattr(distributed, "allgather_json", lambda mine: [mine] * count)
  monkeypatch.setattr(execute.Evaluation, "_looked_up", lambda self, volumes, extras, tag: [
      self._missing(*v, extras) for v in volumes])


def _process_1_differs(key: str, edit):
  """An `allgather_json` of 2 processes where process 1's digests differ and its dict holding
  `key` (a plan or the run settings) is `edit(a deep copy of process 0's)`."""
  def gather(mine):
    if isinstance(mine, str):  # a digest
      return [mine, "another"]
    if isinstance(mine, dict) and key in mine:
      return [mine, edit(copy.deepcopy(mine))]
    return [mine, mine]
  return gather


def _refused_as_process_0(monkeypatch, capsys, data: str, work: str, key: str, edit) -> str:
  """The error line of a threshold-only evaluation run as process 0 of 2 whose process 1 differs
  (`_process_1_differs(key, edit)`); exit code 2."""
  _as_process(monkeypatch, 0)
  monkeypatch.setattr(distributed, "allgather_json", _process_1_differs(key, edit))
  assert main_lib.run_checked(threshold_only(data), work) == 2
  return _error(capsys)


def _error(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_a_workdir_other_hosts_do_not_see_is_one_line_naming_the_file(tiny_data_dir, tmp_path,
                                                                     monkeypatch, capsys):
  """Each process of 2 reads what the other wrote to eval/ (the intensity median, the val results,
  the thresholds, the result counts): where that is missing (each host its own --workdir) the
  process stops with one line naming the file and the fix, exit code 2. (A RuntimeError or
  FileNotFoundError traceback, and a SIGABRT in JAX's shutdown.)"""
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  c = threshold_only(data)
  done = str(tmp_path / "done")
  main_lib.run_stage(c, done)  # one process: the volume cache and every stored result
  eval_dir = os.path.join(done, "eval")
  _as_process(monkeypatch, 1)
  fresh = str(tmp_path / "fresh1")
  assert main_lib.run_checked(c, fresh) == 2  # process 0 wrote the median in its own workdir
  line = _error(capsys)
  median = os.path.join(fresh, "eval", "threshold", "intensity_median_fold0.json")
  assert line.startswith(f"error: {median}: missing or unreadable after process 0 wrote it: ")
  assert line.endswith("give every host the same --workdir on a file system they all see"), line
  shutil.move(os.path.join(eval_dir, "thresholds.json"), str(tmp_path / "thresholds.json"))
  assert main_lib.run_checked(c, done) == 2
  assert _error(capsys).startswith(
      f"error: {eval_dir}/thresholds.json: missing after process 0 wrote it: ")
  shutil.move(str(tmp_path / "thresholds.json"), os.path.join(eval_dir, "thresholds.json"))
  assert main_lib.run_checked(c, done) == 2
  assert _error(capsys).startswith(
      f"error: {eval_dir}/process_0-of-2.json: missing after process 0 wrote it: ")
  _as_process(monkeypatch, 0)
  fresh = str(tmp_path / "fresh0")
  assert main_lib.run_checked(c, fresh) == 2  # process 1's val result is in its own workdir
  val = os.path.join(fresh, "eval", "threshold", "none", "fold0", "Brats21", "val")
  assert _error(capsys).startswith(
      f"error: {val}: no stored result of threshold/none/fold0 for 1 volume(s) (Brats21_val_001) "
      "after every process finished its share: ")


def test_a_cache_folder_of_each_hosts_own_is_one_line_naming_the_setting(tiny_data_dir, tmp_path,
                                                                        monkeypatch, capsys):
  """Processes preprocess the evaluation's volumes in shares and read each other's entries: with
  a data.cache_dir of its own on each host, process 0 of 2 stops with one line naming the
  setting, before it reads any volume. (It stopped at the first volume process 1 had
  preprocessed: 'not in the preprocessing cache; run the prepare stage first'.)"""
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  c = threshold_only(data)
  c.data.cache_dir = str(tmp_path / "own_cache")
  _as_process(monkeypatch, 0)
  assert main_lib.run_checked(c, str(tmp_path / "work")) == 2
  line = _error(capsys)
  assert line.startswith(f"error: --config.data.cache_dir={c.data.cache_dir}: 5 of the 11 "
                         "volume(s) the processes preprocessed in shares are not in this "
                         "process's cache (e.g. "), line
  assert line.endswith("set data.cache_dir to a folder on a file system they all see"), line


@pytest.mark.parametrize("differ", ["file", "rows"])
def test_processes_planning_other_volumes_stop_before_any_work(tiny_data_dir, tmp_path,
                                                               monkeypatch, capsys, differ):
  """Volumes are shared out by position and results found by their files' identity: when process
  1's plan differs (another copy of a file, e.g. each host its own data folder; or a row less) every
  process stops at start-up with the same line naming the file or volume, nothing evaluated.
  (They went on: a volume never computed, or a misleading error about the cache or workdir later,
  after the work.)"""
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  first = "Brats21/test/threshold/none/fold0[0] Brats21_test_000"

  def edit(plan):
    if differ == "file":
      plan[first] = [plan[first][0], "another entry key"]
    else:
      del plan[first]
    return plan

  work = str(tmp_path / "work")
  line = _refused_as_process_0(monkeypatch, capsys, data, work, first, edit)
  if differ == "file":
    image = os.path.join(data, "Data", "Test", "Brats21", "t1", "Brats21_test_000_t1.nii.gz")
    assert line == (f"error: {image}: not the same file on process 0 and process 1 of 2 (the "
                    f"path, size or modification time of the files of {first} differ): every host "
                    "must read the same data files; give data.data_dir on a file system they all "
                    "see")
  else:
    assert line.startswith(f"error: {data}: process 1 of 2 plans other volumes than process 0 "
                           f"(e.g. {first} on process 0 only, 1 in all): "), line
  assert not os.path.exists(os.path.join(work, "eval"))


def test_processes_with_other_devices_or_models_stop_before_any_work(tiny_data_dir, tmp_path,
                                                                     monkeypatch, capsys):
  """A result is stored with what it depends on (settings, weights, device kind, JAX release):
  when process 1 computes with another (another GPU model, another checkpoint or JAX release on
  its host), process 0 could use none of its results. Every process stops at start-up with the
  same line naming the run and what differs. (They went on, and stopped after the val pass with
  'no stored result', naming the workdir.)"""
  data = copy_data(tiny_data_dir, str(tmp_path / "data"))
  run = "threshold/none/fold0"

  def edit(settings):
    settings[run]["backend"]["device_kind"] = "another kind"
    return settings

  work = str(tmp_path / "work")
  line = _refused_as_process_0(monkeypatch, capsys, data, work, run, edit)
  assert line.startswith(f"error: process 1 of 2 evaluates {run} with another backend than "
                         'process 0 ({"device_kind": "another kind", '), line
  assert line.endswith("process 0 could use none of that process's results)"), line
  assert not os.path.exists(os.path.join(work, "eval"))
