"""The SADM ablations of the paper's Table 1 (README.md "Reproducing Table 1") as one sweep: cDDPM, stage II per variant × fold, evaluation per row.

    python -m sadm_jax.sweep --sweep=configs/sweeps/sadm_ablation.py --workdir=W \
        --mode=slurm -- --config.data.data_dir=D   # writes W/slurm/*.sbatch + W/slurm/submit.sh
    python -m sadm_jax.sweep --sweep=configs/sweeps/sadm_ablation.py --workdir=W --report

`cddpm` trains the cDDPM (W/cddpm); `train-<variant>-f<k>` trains the SegUnet of every variant on
5 folds (IXI folds for DRAEM, seed repeats for BraTS/ATLAS, Q18), each after the cDDPM it uses
(the plain UNet uses none); each report row W/<row>/report/ is one evaluation after its trained
runs: the trained variants, the reconstruction t-sets and the λ-weighted combination, the last
two on the SADM-DRAEM runs. Select parts with --members=...; an existing cDDPM replaces `cddpm`
with `-- --config.sadm.cddpm_workdir=C --config.evaluate.cddpm_workdir=C` and --members listing
the other members (their dependency on `cddpm` then needs W/cddpm/DONE, or drop it here).
"""

from sadm_jax.sweep import Member, flag

FOLDS = 5
CDDPM = "{workdir}/cddpm"

# Trained variants: name -> (stage-II config, overrides). Rows of Table 1 they stand for:
TRAINED = {
    "sadm_draem": ("configs/sadm_draem.py", ()),  # SADM_res, DRAEM anomalies
    "sadm_brats": ("configs/sadm_brats.py", ()),  # SADM_res, weak BraTS supervision
    "sadm_atlas": ("configs/sadm_atlas.py", ()),  # SADM_res, weak ATLAS supervision
    "sadm_draem_no_residual": ("configs/sadm_draem.py", ("--config.sadm.use_residual=False",)),
    "unet_draem": ("configs/sadm_draem.py", ("--config.sadm.use_cddpm=False",)),  # Unet, no cDDPM
    "unet_brats": ("configs/sadm_brats.py", ("--config.sadm.use_cddpm=False",)),
    "unet_atlas": ("configs/sadm_atlas.py", ("--config.sadm.use_cddpm=False",)),
}

# Evaluation-only variants of the SADM-DRAEM runs: name -> evaluation overrides.
EVALUATED = {
    "sadm_draem_t250": (flag("diffusion.ensemble_timesteps", (249,)),),
    "sadm_draem_t500": (flag("diffusion.ensemble_timesteps", (499,)),),
    "sadm_draem_t750": (flag("diffusion.ensemble_timesteps", (749,)),),
    "sadm_draem_t250_750": (flag("diffusion.ensemble_timesteps", (249, 749)),),
    **{f"sadm_draem_lam{lam}": ("--config.evaluate.combination=weighted",
                                flag("evaluate.lam", lam), flag("evaluate.methods", ("sadm",)))
       for lam in (0.25, 0.5, 0.75)},
}


def _trained(variant: str) -> list[str]:
  return [f"train-{variant}-f{k}" for k in range(FOLDS)]


def _fold(config: str, k: int) -> tuple[str, ...]:
  weak = "brats" in config or "atlas" in config
  return (f"--config.data.fold={k}",) + ((f"--config.sadm.repeat={k}",) if weak else ())


def _evaluation(name: str, variant: str, overrides=()) -> Member:
  dirs = tuple(f"{{workdir}}/{t}" for t in _trained(variant))
  return Member(name, "configs/evaluate.py",
                (f"--config.evaluate.cddpm_workdir={CDDPM}", flag("evaluate.sadm_workdirs", dirs))
                + tuple(overrides), after=("cddpm", *_trained(variant)))


def get_sweep():
  members = [Member("cddpm", "configs/cddpm.py", report=False)]
  for variant, (config, overrides) in TRAINED.items():
    plain = "--config.sadm.use_cddpm=False" in overrides
    for k, name in enumerate(_trained(variant)):
      cddpm = () if plain else (f"--config.sadm.cddpm_workdir={CDDPM}",)
      members.append(Member(name, config, overrides + _fold(config, k) + cddpm,
                            after=() if plain else ("cddpm",), report=False))
  members += [_evaluation(variant, variant) for variant in TRAINED]
  members += [_evaluation(name, "sadm_draem", o) for name, o in EVALUATED.items()]
  return members
