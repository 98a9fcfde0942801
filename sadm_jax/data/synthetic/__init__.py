"""Synthetic cohort generator: template anatomy, calibrated lesions, scanner acquisition, and the authors' layout on disk (docs/synthetic-cohort.md)."""

from sadm_jax.data.synthetic.cohort import (CohortConfig, Subject, generate_cohort, make_subject,
                                            split_indices, subject_row)
from sadm_jax.data.synthetic.overview import write_montage
