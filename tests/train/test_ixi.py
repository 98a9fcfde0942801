"""The IXI tables of the SparK and cDDPM stages (train.ixi)."""

import glob
import os

import pytest

from configs import cddpm
from sadm_jax.data.errors import DataError
from sadm_jax.train import ixi
from tests.data import fake_data


def test_a_training_split_left_empty_is_named_with_why(tmp_path):
  """Every row invalid and skipped (data.skip_invalid): the training loader's sampler failed with
  grain's 'Invalid number of records in Sampler', naming neither the split nor why."""
  base = fake_data.write_data_dir(str(tmp_path), n_ixi=6, n_patho=1)
  c = cddpm.get_config("tiny")
  c.data.data_dir, c.data.skip_invalid = str(tmp_path), True
  _, train = fake_data.read_csv(os.path.join(base, "splits", "IXI_train_fold0.csv"))
  for row in train:
    os.remove(base + row[5])
  assert glob.glob(os.path.join(base, "Train", "ixi", "t1", "*"))  # other folds' rows remain
  with pytest.raises(DataError, match=r"IXI_train_fold0.csv: no volume left to train on: 3 of its "
                                      r"3 rows are invalid and were skipped \(data.skip_invalid\)$"):
    ixi.ixi_tables(c)
