"""The SADM ablations of the paper's Table 1 (ANCHORS §1) as one sweep: stage I, stage II per variant × fold, evaluation per row.

    python -m sadm_jax.sweep --sweep=configs/sweeps/sadm_ablation.py --workdir=W \
        --set=data.data_dir=D --mode=slurm        # writes W/sweep.sbatch + W/submit.sh
    python -m sadm_jax.sweep --sweep=configs/sweeps/sadm_ablation.py --workdir=W --report

Phase 0 trains the cDDPM (W/cddpm); phase 1 trains the SegUnet of every variant on 5 folds
(IXI folds for DRAEM, seed repeats for BraTS/ATLAS, Q18) in W/train-<variant>-f<k>; phase 2
evaluates each report row (W/<row>/report/metrics.csv): the trained variants, the reconstruction
t-sets and the λ-weighted combination, the last two on the SADM-DRAEM runs. Each evaluation also
reports the threshold and cDDPM rows unless it only varies the SADM score. Select parts with
--members=...; an existing cDDPM can replace phase 0 with --set=sadm.cddpm_workdir=... plus
--set=evaluate.cddpm_workdir=... and --members listing the other members.
"""

FOLDS = 5
CDDPM = "{workdir}/cddpm"

# Trained variants: name -> (stage-II config, overrides). Rows of Table 1 they stand for:
TRAINED = {
    "sadm_draem": ("configs/sadm_draem.py", {}),  # SADM_res, DRAEM anomalies
    "sadm_brats": ("configs/sadm_brats.py", {}),  # SADM_res, weak BraTS supervision
    "sadm_atlas": ("configs/sadm_atlas.py", {}),  # SADM_res, weak ATLAS supervision
    "sadm_draem_no_residual": ("configs/sadm_draem.py", {"sadm.use_residual": False}),
    "unet_draem": ("configs/sadm_draem.py", {"sadm.use_cddpm": False}),  # Unet, no cDDPM
    "unet_brats": ("configs/sadm_brats.py", {"sadm.use_cddpm": False}),
    "unet_atlas": ("configs/sadm_atlas.py", {"sadm.use_cddpm": False}),
}

# Evaluation-only variants of the SADM-DRAEM runs: name -> evaluation overrides.
EVALUATED = {
    "sadm_draem_t250": {"diffusion.ensemble_timesteps": (249,)},
    "sadm_draem_t500": {"diffusion.ensemble_timesteps": (499,)},
    "sadm_draem_t750": {"diffusion.ensemble_timesteps": (749,)},
    "sadm_draem_t250_750": {"diffusion.ensemble_timesteps": (249, 749)},
    "sadm_draem_lam0.25": {"evaluate.combination": "weighted", "evaluate.lam": 0.25,
                           "evaluate.methods": ("sadm",)},
    "sadm_draem_lam0.5": {"evaluate.combination": "weighted", "evaluate.lam": 0.5,
                          "evaluate.methods": ("sadm",)},
    "sadm_draem_lam0.75": {"evaluate.combination": "weighted", "evaluate.lam": 0.75,
                           "evaluate.methods": ("sadm",)},
}


def _train_dirs(variant: str) -> tuple[str, ...]:
  return tuple(f"{{workdir}}/train-{variant}-f{k}" for k in range(FOLDS))


def _fold_overrides(config: str, k: int) -> dict:
  weak = "brats" in config or "atlas" in config
  return {"data.fold": k, **({"sadm.repeat": k} if weak else {})}


def get_sweep():
  members = [{"name": "cddpm", "config": "configs/cddpm.py", "phase": 0, "report": False}]
  for variant, (config, overrides) in TRAINED.items():
    for k in range(FOLDS):
      members.append({"name": f"train-{variant}-f{k}", "config": config, "phase": 1,
                      "report": False,
                      "overrides": {**overrides, **_fold_overrides(config, k),
                                    "sadm.cddpm_workdir": CDDPM}})
  evaluate = {"evaluate.cddpm_workdir": CDDPM}
  for variant in TRAINED:
    members.append({"name": variant, "config": "configs/evaluate.py", "phase": 2,
                    "overrides": {**evaluate, "evaluate.sadm_workdirs": _train_dirs(variant)}})
  for name, overrides in EVALUATED.items():
    members.append({"name": name, "config": "configs/evaluate.py", "phase": 2,
                    "overrides": {**evaluate, "evaluate.sadm_workdirs": _train_dirs("sadm_draem"),
                                  **overrides}})
  return {"members": members}
