"""Acquisition of a synthetic subject: scanner and site profiles, per-subject contrast, bias field, Rician noise, skull stripping."""

from __future__ import annotations

import dataclasses

import numpy as np

from sadm_jax.data.synthetic import calibration
from sadm_jax.data.synthetic.anatomy import T_CSF, T_GM, T_WM, smooth_noise

# Scanner profiles: WM intensity in scanner units, Rician noise as a fraction of WM.
_IXI_SITES = {"Guys": (720.0, 0.025), "HH": (1150.0, 0.018), "IOP": (480.0, 0.03)}
_WMH_SCANNERS = {"Utrecht Philips Achieva 3T": (900.0, 0.02),
                 "Singapore Siemens TrioTim 3T": (640.0, 0.022),
                 "Amsterdam GE Signa HDxt 3T": (1050.0, 0.025)}
_MSLUB_SCANNERS = {"Ljubljana Siemens Magnetom Trio 3T": (820.0, 0.02)}


@dataclasses.dataclass(frozen=True)
class Profile:
  """Per-subject contrast: tissue multipliers of the template levels, gamma, bias, noise, scale."""
  ratios: dict[str, float]  # 'csf', 'gm', 'wm'
  gamma: float
  bias_std: float
  noise: float  # Rician sigma / WM intensity
  scale: float  # WM intensity in scanner units


def subject_metadata(rng: np.random.Generator, dataset: str, subject: int
                     ) -> tuple[str, dict, tuple]:
  """(img_name, metadata incl. age, (scale, noise) of the scanner)."""
  n = subject + 1
  if dataset == "IXI":
    site = str(rng.choice(sorted(_IXI_SITES)))
    meta = {"sex": str(rng.choice(["F", "M"])), "site": site, "age": rng.uniform(20, 86)}
    return f"IXI{n:03d}-Demo-{n:04d}", meta, _IXI_SITES[site]
  if dataset == "Brats21":
    grade = "HGG" if rng.random() < calibration.BRATS_HGG else "LGG"
    meta = {"grade": grade, "age": rng.uniform(25, 80)}
    return f"BraTS2021_{n:05d}", meta, (rng.uniform(350, 1300), rng.uniform(0.015, 0.035))
  if dataset == "ATLAS_v2":
    site = int(rng.integers(1, 10))
    meta = {"site": f"r{site:03d}", "lesion_volume_ml": 0.0, "age": rng.uniform(40, 88)}
    return f"sub-r{site:03d}s{n:03d}", meta, (300 + 110 * site, 0.015 + 0.002 * site)
  scanners = _MSLUB_SCANNERS if dataset == "MSLUB" else _WMH_SCANNERS
  scanner = str(rng.choice(sorted(scanners)))
  age = rng.uniform(20, 60) if dataset == "MSLUB" else rng.uniform(55, 90)
  name = f"MSLUB_patient{n:03d}" if dataset == "MSLUB" else f"WMH_{n:03d}"
  return name, {"scanner": scanner, "age": age}, scanners[scanner]


def scanner_profile(rng: np.random.Generator, scanner: tuple[float, float]) -> Profile:
  scale, noise = scanner
  wm = float(np.clip(rng.normal(1.0, 0.03), 0.925, 1.075))
  # Grey matter and CSF relative to white matter as on a 3 T MPRAGE (calibration.GM_TO_WM,
  # CSF_TO_WM), as multipliers of the template's own tissue levels.
  ratios = {"wm": wm, "gm": wm * rng.uniform(*calibration.GM_TO_WM) * T_WM / T_GM,
            "csf": wm * rng.uniform(*calibration.CSF_TO_WM) * T_WM / T_CSF}
  return Profile(ratios, float(np.exp(rng.uniform(-0.15, 0.15))), rng.uniform(0.05, 0.12),
                 noise * rng.uniform(0.8, 1.2), scale * rng.uniform(0.9, 1.1))


def acquire(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, profile: Profile
            ) -> np.ndarray:
  """Gamma, bias field, scanner scale, Rician noise, skull stripping -> float32 T1 (integers)."""
  bias = smooth_noise(rng, image.shape, 60.0)[mask] * np.float32(profile.bias_std)
  x = np.maximum(image[mask] / np.float32(T_WM), 0.0) ** np.float32(profile.gamma)
  x *= np.float32(profile.scale) * np.exp(bias)
  sigma = np.float32(profile.noise * profile.scale)
  n1 = rng.standard_normal(x.shape, dtype=np.float32) * sigma
  n2 = rng.standard_normal(x.shape, dtype=np.float32) * sigma
  out = np.zeros(image.shape, np.float32)
  out[mask] = np.rint(np.sqrt((x + n1) ** 2 + n2 ** 2))
  return out
