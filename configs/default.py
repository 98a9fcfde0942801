"""Base configuration: defines every field once; stage and experiment configs only override it.

Per-item faithful flags are typed placeholders: `None` means "follow `config.faithful`"
(resolved by `sadm_jax.config.resolve`), an explicit True/False wins.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "prepare"  # one of sadm_jax.main.STAGES: prepare, demo, spark, cddpm, sadm, evaluate,
  # predict, reproduce, describe, aot (README "Stages")
  c.seed = 3141
  c.faithful = False  # reference behaviour for every faithful switch (docs/method.md §5)

  # ---- data (METHOD §2) ----
  d = c.data = ml_collections.ConfigDict()
  d.data_dir = ""  # DATA_DIR of the authors' preprocessed data (with or without the Data/ level)
  d.cache_dir = ""  # preprocessed-volume cache; "" = <data_dir>/.sadm_cache
  d.modality = "t1"
  d.splits = ()  # splits for `prepare`; () = every known split found under data_dir
  d.skip_invalid = False  # log and skip invalid rows instead of failing
  d.clean_splits = config_dict.placeholder(bool)  # de-dup + disjoint splits (Q17); faithful: keep
  d.num_workers = 2  # processes for validation/preprocessing (at most one per core and volume);
  # predict: threads preparing scans (the next batches' too)
  d.fold = 0
  d.slice_sampling = config_dict.placeholder(str)  # 'brain' (default) | 'uniform' (faithful, Q29)
  d.augment = True  # intensity augmentation (METHOD §2.4)
  d.augment_3d = config_dict.placeholder(bool)  # augment the volume before slicing (faithful, Q28)
  d.loader_workers = 0  # grain worker processes
  d.loader_threads = 16  # grain threads preparing training records (in each worker)
  d.prefetch_batches = 2  # training batches prepared ahead (grain's default, 500 records, wastes
  # the records read ahead when a run ends: ~1.4 s of CPU per tiny test run)
  d.val_slices_per_volume = 8  # deterministic validation slices per volume (Q26)
  p = d.preprocess = ml_collections.ConfigDict()
  p.curvature_flow = True  # SimpleITK CurvatureFlow equivalent on intensity images (Q22)
  p.cf_time_step = 0.125
  p.cf_iterations = 3
  p.crop_size = (192, 192, 100)
  p.percentiles = (1.0, 99.0)
  p.downsample = 2

  # ---- models (METHOD §3) ----
  md = c.model = ml_collections.ConfigDict()
  md.names = ("encoder", "unet")  # models this config trains/uses (what `stage=describe` reports)
  md.dtype = "float32"  # compute dtype: 'float32' | 'bfloat16' (parameters and optimiser stay f32)
  u = md.unet = ml_collections.ConfigDict()
  u.model_channels = 128
  u.channel_mult = (1, 2, 2)
  u.num_res_blocks = 3
  u.attention_resolutions = ()  # downsample factors with attention besides the middle (Q2): e.g. (2, 4)
  u.num_head_channels = 64
  u.num_groups = 32
  e = md.encoder = ml_collections.ConfigDict()
  e.cond_dim = 512  # explicit (Q1)
  e.drop_path_rate = 0.05
  e.stage_sizes = (3, 4, 6, 3)  # ResNet-50
  e.width = 64  # stem width; stage widths 1/2/4/8 × this (ResNet-50: 64)
  e.pretrained_workdir = ""  # SparK workdir to initialise the encoder from (strict key check, Q8)
  sp = md.spark = ml_collections.ConfigDict()
  sp.mask_ratio = 0.65
  sp.decoder_width = 512

  # ---- diffusion (METHOD §3.4) ----
  df = c.diffusion = ml_collections.ConfigDict()
  df.num_timesteps = 1000
  df.cosine_s = 0.008
  df.max_beta = 0.999
  df.noise = "simplex"  # 'simplex' | 'gaussian'
  df.shared_noise = config_dict.placeholder(bool)  # one field per batch (faithful, Q4)
  # At evaluation shared_noise is read from the evaluation's config (one field per volume);
  # aligned_octaves and float16_noise, like octaves/persistence/frequency, from the cDDPM's own.
  # Reference octave layout: one permutation, no offsets, a vertex at pixel (0, 0) for every octave
  # (per-field std 0.54 instead of 0.57; faithful, Q4). Changes the trained model's input noise.
  df.aligned_octaves = config_dict.placeholder(bool)
  df.float16_noise = config_dict.placeholder(bool)  # round ε to float16 as the reference (faithful, Q4)
  df.octaves = 6
  df.persistence = 0.8
  df.frequency = 64.0
  df.p2_gamma = 0.0
  df.ensemble_timesteps = (249, 499, 749)

  # ---- training (generic loop) ----
  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 32  # global
  t.num_epochs = 1200  # epochs of one slice per training volume (reference); ⌊volumes / batch⌋
  # steps each: 12 on the reference's IXI rows, 11 after split cleaning (docs/method.md §1)
  t.num_steps = 0  # > 0 overrides num_epochs
  t.log_every = 50
  t.eval_every = 240
  t.checkpoint_every = 500
  t.keep_checkpoints = 2
  t.async_checkpoints = True
  t.tensorboard = True
  o = c.optimizer = ml_collections.ConfigDict()
  o.name = "adam"
  o.learning_rate = 1e-4
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.grad_clip_norm = 0.0
  ms = c.mesh = ml_collections.ConfigDict()
  ms.num_devices = 0  # 0 = all visible devices on a ('data',) mesh
  ms.fsdp = False  # shard parameters + optimiser state over 'data' by the rules below
  ms.fsdp_rules = ((r"kernel$", "fsdp"),)  # (regex on the leaf path, 'fsdp'|'replicate'); Adam moments match too
  ms.fsdp_min_size = 2 ** 16  # leaves smaller than this stay replicated

  # ---- stage II: SADM (METHOD §3.7–3.8) ----
  sa = c.sadm = ml_collections.ConfigDict()
  sa.cddpm_workdir = ""  # stage-I workdir whose best cDDPM checkpoint is loaded once and frozen
  sa.mode = "draem"  # 'draem' (IXI + synthetic anomalies) | 'brats' | 'atlas' (weak supervision)
  sa.use_residual = True  # siamese residual branch; False = the 'Unet (input only)' ablation
  sa.use_cddpm = True  # False = plain UNet on the input, no cDDPM at all (ablation row)
  sa.loss = "bce"  # 'bce' | 'dice'
  sa.deep_supervision = False
  sa.segnet_wf = 6  # SegUnet widths 2^(wf+i), i = 0..3: 64..512 (paper, 16,736,705 parameters)
  sa.frozen_train_mode = config_dict.placeholder(bool)  # frozen E in train mode = BN drift (faithful, Q6)
  sa.repeat = 0  # weak supervision: repeats differ by seed only (Q18)
  sa.weak_train_rows = config_dict.placeholder(tuple)  # (start, stop) rows of <set>_val.csv; None = reference
  sa.weak_val_rows = config_dict.placeholder(tuple)
  an = c.anomaly = ml_collections.ConfigDict()
  an.p_anomalous = 1.0
  an.faithful_uint8_wrap = config_dict.placeholder(bool)  # Q25 uint8 wrap-around (faithful)
  an.restrict_to_brain = False

  # ---- evaluation (METHOD §3.9, §4) ----
  ev = c.evaluate = ml_collections.ConfigDict()
  ev.methods = ("threshold", "cddpm", "sadm")  # rows of the report
  ev.test_sets = ("Brats21", "ATLAS_v2", "MSLUB", "WMH")
  ev.include_ixi = True  # healthy IXI val/test: FPR thresholds and volume-level detection AUROC
  ev.cddpm_workdir = ""
  ev.sadm_workdirs = ()  # one SADM workdir per fold/repeat
  ev.combination = "sum"  # 'sum' (reference) | 'residual' | 'segmentation' | 'weighted'
  ev.lam = 0.5
  ev.residual_mode = "ssim"  # 'ssim' | 'l1' | 'l2'
  ev.median_size = 5
  ev.erode_mask = 0
  ev.min_component_size = 0
  ev.threshold_method = config_dict.placeholder(str)  # 'exact' (default) | 'bisection' (faithful)
  # The reference's metric arithmetic (faithful): whole-grid AUROC/AUPRC (Q14), sagittal slices
  # (Q12), bisection oracle and τ search in float32 with 0/0 Dice NaN (Q15), empty-GT-and-empty-
  # prediction Dice NaN and left out of the mean (default: 1, averaged in; Q34), and the test pass
  # stores τ as each volume's best_threshold (default: the per-volume oracle threshold).
  ev.faithful_metrics = config_dict.placeholder(bool)
  ev.write_nifti = True
  ev.write_png = True
  ev.dtype = "float32"  # inference compute dtype (Q33)

  # ---- predict on a new scan ----
  pr = c.predict = ml_collections.ConfigDict()
  pr.checkpoint_dir = ""
  pr.input = ""  # a scan, 'a.nii.gz,b.nii.gz', a folder of .nii/.nii.gz, a glob pattern
  # ('data/*/anat/*_T1w.nii.gz', '**' = any depth) or a CSV (image[,mask])
  pr.mask = ""  # a mask, 'a_mask.nii.gz,...' (one per scan), or a folder; '' = brain is image > 0
  # (folder or pattern input: the masks next to the scans, image > 0 for a scan without one)
  pr.mask_suffix = "_mask"  # folder rule: mask of <base>[_<mod>].nii.gz is <base>_mask.nii.gz
  pr.output = ""  # '' = the workdir; list/folder/pattern/CSV input: one folder <output>/<scan name>/
  # each
  pr.threshold = config_dict.placeholder(float)  # None = the one stored by evaluation
  pr.run = ""  # evaluation run id, e.g. 'sadm/draem/fold0'; '' = the first SADM run, else the
  # first input-only UNet, cDDPM, threshold run
  pr.threshold_set = ""  # data set whose τ is used; '' = the run's own pathology, else the first

  # ---- multi-process runs (sadm_jax.distributed); the defaults mean auto-detect ----
  dist = c.distributed = ml_collections.ConfigDict()
  dist.coordinator_address = ""  # 'host:port' of process 0; '' = from JAX_*/SLURM/TPU environment
  dist.num_processes = 0  # 0 = auto; 1 = force a single process
  dist.process_id = -1  # -1 = auto
  dist.connect_timeout = 300  # seconds every process waits for all to connect (JAX's default)

  # ---- embedded demo cohort ----
  m = c.demo = ml_collections.ConfigDict()
  m.root = ""  # "" = <workdir>/demo_data
  m.seed = 0
  m.size = "default"  # 'default' | 'tiny'
  # Budgets of the demo job's stages (sadm_jax.demo_job); each stage otherwise uses the fields above.
  m.spark_steps = 0  # > 0: SparK-pretrain the encoder first (needs a grid divisible by 32)
  m.spark_learning_rate = 2e-4
  m.cddpm_steps = 400
  m.cddpm_learning_rate = 1e-3
  m.sadm_steps = 400
  m.sadm_learning_rate = 1e-3

  # ---- Table-1 reproduction (stage=reproduce, configs/reproduce.py) ----
  rp = c.reproduce = ml_collections.ConfigDict()
  rp.repeats = 1  # n = 2..5: every model trained n times (IXI folds 0..n-1), mean ± std in the table
  return c
