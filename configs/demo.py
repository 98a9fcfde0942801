"""The main job on the embedded demo cohort (built from the MNI152 template shipped with nilearn).

    python -m sadm_jax.main --config=configs/demo.py --workdir=runs/demo
    python -m sadm_jax.main --config=configs/demo.py:tiny --workdir=/tmp/demo   # ~2 min, the test

Builds the cohort, prepares it, trains a small cDDPM and a small SADM-DRAEM (fold 0), evaluates
the intensity threshold baseline, the cDDPM and SADM on the tumour-, stroke- and WMH-like test sets
and prints the report (sadm_jax/demo_job.py). Sized for ≤ 20 minutes on 2 CPU cores: a 64×64×32
working grid (3 mm voxels: the 192×192×96 crop downsampled ×3; the paper uses 96×96×50 at 2 mm)
and small networks. Stage budgets live in `demo.*_steps`; SparK is off (`demo.spark_steps=0`).
"""

from configs import cddpm as cddpm_config
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.stage = "demo"
  c.model.names = ("encoder", "unet", "segnet")
  # Grid: 192×192×96 mm crop → 64×64×32 (encoder inputs must be multiples of 32).
  c.data.preprocess.crop_size = (192, 192, 96)
  c.data.preprocess.downsample = 3
  c.data.val_slices_per_volume = 8
  # Small networks (cDDPM UNet + encoder ≈ 0.93 M parameters, SegUnet 0.26 M).
  u = c.model.unet
  u.model_channels, u.channel_mult, u.num_res_blocks = 16, (1, 2, 2), 1
  u.num_head_channels, u.num_groups = 16, 8
  e = c.model.encoder
  e.stage_sizes, e.width, e.cond_dim = (1, 1, 1, 1), 16, 64
  c.model.spark.decoder_width = 128
  c.sadm.segnet_wf = 3  # widths 8..64: a 4× cheaper step than wf=4, which was the SADM bottleneck
  # Simplex noise at the demo grid's scale (the paper's frequency 64 is for 96-pixel slices).
  c.diffusion.frequency = 64.0 * 2 / 3
  c.train.batch_size = 16
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.tensorboard = False
  c.evaluate.test_sets = ("Brats21", "ATLAS_v2", "WMH")  # tumour-, stroke-, WMH-like
  # Stage budgets (BENCHMARKS.md, "Demo main job"). At 400 SADM steps (lr 1e-3) the SegUnet had
  # not yet learnt to find anomalies (its validation AUPRC on the tumour-like set was at chance
  # level); more SegUnet steps at lr 2e-3 made it useful (800 steps: AUPRC 7 %). In the ninth
  # session +100 cDDPM steps raised SADM's mean validation Dice over the three sets 39.8 → 44.3,
  # +150 SADM steps only to 41.7. The fourteenth session re-budgeted for ≤ 17 minutes with margin
  # on the slower Ice Lake VM (350/600 steps was estimated at ≈ 17.8–18.8 min there), choosing
  # on validation only (criterion: SADM's mean validation Dice, stages ≤ 500 s on the AMX VM):
  # 350/600 41.8 (583 s), 350/400 41.4 (475 s), 400/300 44.0 (457 s), 450/300 42.9 (469 s),
  # 400/400 44.0 (506 s; its best SADM checkpoint was step 300). Validation and checkpoints every
  # 100 steps instead of 50 (fewer validation passes and saves; the best checkpoint is chosen from
  # those). DRAEM masks stay inside the brain, where evaluation scores.
  c.demo.cddpm_steps = 400
  c.demo.sadm_steps = 300
  c.demo.sadm_learning_rate = 2e-3
  c.anomaly.restrict_to_brain = True
  if arg == "tiny":  # the end-to-end test: the same job, a few steps on the tiny cohort and grid
    cddpm_config.apply_tiny(c)  # 128×128×16 crop → 64×64×8
    c.data.preprocess.downsample = 2
    c.model.names = ("encoder", "unet", "segnet")
    c.sadm.segnet_wf = 3
    c.demo.size = "tiny"
    c.demo.cddpm_steps = 4
    c.demo.sadm_steps = 4
    # The tiny stage tests' learning rates: their compiled steps (persistent cache) are reused.
    c.demo.cddpm_learning_rate = 2e-3
    c.demo.sadm_learning_rate = 5e-5
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
    c.evaluate.write_nifti = True
    c.evaluate.write_png = True
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; expected 'tiny' or nothing")
  return c
