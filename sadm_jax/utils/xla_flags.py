"""XLA:CPU flags the package sets by default (one place), before JAX's backend starts.

jaxlib 0.10's XLA:CPU hands convolutions, lone dots and reductions to YNNPACK fusions (its
default fusion types: "individual convolution", "reduce" and "individual dot"; "dot" — a dot with
elementwise neighbours — and "eltwise" are opt-in). For our networks those three are the main
cost on CPU, and the package removes them, so that no operation goes to YNNPACK:
- "individual convolution": the weight gradient of a 3×3 conv, which XLA expresses as a
  convolution with a 96×96 window over a batch of C_in, runs ~4–8× slower through YNNPACK than
  through XLA's own (Eigen) convolution; the forward / input gradient are no faster
  (BENCHMARKS.md, "CPU ops");
- "reduce": GroupNorm's statistics (sums over H, W and a channel group) took 15–25 ms per
  64×64×32-slice reduction, a third of the demo UNet's inference time;
- "individual dot": attention's small batched matmuls ran at ~2.5 GFLOP/s.
Dropping the last two makes the demo's inference 1.1–1.5× faster and its train steps up to 1.35×
(interleaved and single measurements differ on this VM; BENCHMARKS.md, "XLA:CPU fusion
types"). (The package's comments once said that YNNPACK kept dot-with-elementwise and
elementwise fusions: it does not; in jaxlib 0.10.2 they are off unless asked for, BENCHMARKS.md
"YNNPACK's default fusion types".)

The `evaluate` stage also gets one CPU device per available core
(`--xla_force_host_platform_device_count`): its per-volume program runs one volume per device,
and on CPU several volumes in parallel keep the cores busier than one volume's small operations
do (demo evaluation on 2 cores: 96–102 s with 2 devices vs 118–136 s with 1, BENCHMARKS.md).
Training stages and `predict` keep one CPU device (predict runs a batch of scans per call, one
per device, but on CPU one device already keeps the cores busy: BENCHMARKS.md "Predict over
devices").

Evaluation programs that hold two or more SegUnets (`scoring.VolumeProgram`) compile with their
own fusion setting, `inference_compiler_options`: YNNPACK keeps the convolutions there. With XLA's
convolutions *and* XLA's reductions such a program gave wrong probabilities for one depth slice in
1-6 of 60 results (volume × SegUnet) on 8 CPU devices (jaxlib 0.10.2; 0 of 120 with YNNPACK's
convolutions or YNNPACK's reductions; BENCHMARKS.md, "Several SegUnets in one evaluation
program"). Forward-only YNNPACK convolutions are slower at the demo's widths (its evaluation stage
with every program so compiled: 68.1 vs 57.7 s, `benchmarks/evaluation.py --end_to_end`), so
programs with one SegUnet, never seen wrong, keep the process's setting.

The package's CPU train programs (train and validation steps) compile with one option of their
own, `train_compiler_options`: their temporaries in heaps of at most `CPU_HEAP_BYTES` instead of
one block, which `apply()` lets glibc keep for the next step (`host_heap`; `SADM_CPU_HEAP_REUSE=0`
turns both off). Same numbers, 90,000 fewer page faults per demo step, steps 7-20 % faster on
an AMD EPYC Zen 4 and SADM steps 15 % slower on an older Zen 1 (BENCHMARKS.md, "Heap reuse").
A per-program option, not a flag: on a GPU it would split the device's temporaries too.
The price: XLA:CPU cannot serialise a program with several temporary heaps, so such train steps
(the demo's and larger) are compiled at every start instead of read from the persistent cache.

`apply()` adds each default flag to `XLA_FLAGS` only when the user has not set that flag
already, and only when the run is (or may be) on CPU: the flags are XLA:CPU options and are
ignored by the GPU compiler, but we leave a GPU run's environment untouched all the same.
Set `SADM_XLA_CPU_DEFAULTS=0` to apply nothing. Flags are read once, when the backend starts:
call `apply()` before anything creates a JAX array or compiles.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

from sadm_jax.utils import host_heap

ENV_SWITCH = "SADM_XLA_CPU_DEFAULTS"

# flag name -> value (without the leading "--")
YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_DEFAULTS: dict[str, str] = {
    YNN_FLAG: "-individual_convolution,-reduce,-individual_dot",
}
# Programs with two or more SegUnets: YNNPACK convolutions, and its dot-with-elementwise and
# elementwise fusions, which take the convolutions' elementwise neighbours into the same YNNPACK
# fusion (the demo's 3-SegUnet program: 3.0 s per volume; 4.3 s with the convolutions alone,
# BENCHMARKS.md "YNNPACK's default fusion types").
INFERENCE_YNN_FUSION_TYPES = ("dot", "eltwise", "individual_convolution")
INFERENCE_STAGES = ("evaluate",)  # these get one CPU device per core
DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"
# Train programs on CPU: temporaries in heaps of at most this size (XLA's soft limit: a larger
# buffer gets a heap of its own), below glibc's 64 MiB thread-heap limit so that they can stay
# in malloc's heaps (`host_heap`).
HEAP_FLAG = "xla_multiheap_size_constraint_per_heap"
CPU_HEAP_BYTES = 60 * 2**20
CACHE_WARNING = (r"Error writing persistent compilation cache entry "
                 r".*Multiple temp buffer allocations")


def available_cores() -> int:
  """CPU cores this process may run on (its affinity mask where the OS has one)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def cpu_default_flags(stage: str | None = None) -> list[str]:
  """The default XLA:CPU flags as command-line words, e.g. ['--xla_cpu_...=...'].

  stage: the run's `config.stage`; `evaluate` adds one CPU device per available core.
  """
  flags = dict(CPU_DEFAULTS)
  if stage in INFERENCE_STAGES:
    flags[DEVICE_COUNT_FLAG] = str(available_cores())
  return [f"--{k}={v}" for k, v in flags.items()]


def _parse_flags(xla_flags: str) -> dict[str, str]:
  """Flag name -> the last value `xla_flags` gives it ('' for a bare `--name`)."""
  words = (w[2:].split("=", 1) for w in xla_flags.split() if w.startswith("--"))
  return {kv[0]: kv[1] if len(kv) > 1 else "" for kv in words}


def _flag_names(xla_flags: str) -> set[str]:
  return set(_parse_flags(xla_flags))


def _switched_off(env, switch: str = ENV_SWITCH) -> bool:
  """Whether the environment variable `switch` says off ('0', 'false', 'no', 'off')."""
  return env.get(switch, "1").strip().lower() in ("0", "false", "no", "off")


def inference_compiler_options(platform: str, environ: dict | None = None) -> dict | None:
  """Per-program XLA options of an inference program on `platform` (None: the process's flags);
  used for evaluation programs with two or more SegUnets (`scoring.VolumeProgram`).

  On CPU: YNNPACK keeps convolutions (`INFERENCE_YNN_FUSION_TYPES`), unless `SADM_XLA_CPU_DEFAULTS`
  is off or the user's `XLA_FLAGS` sets the fusion types to anything but the package default (the
  user's setting wins). Pass the result as `jax.jit(..., compiler_options=...)`.
  """
  env = os.environ if environ is None else environ
  if platform != "cpu" or _switched_off(env):
    return None
  user = _parse_flags(env.get("XLA_FLAGS", "")).get(YNN_FLAG)
  if user is not None and user != CPU_DEFAULTS[YNN_FLAG]:
    return None
  # As a compile option the field takes enum names, not the flag's "+/-type" syntax.
  types = (f"LIBRARY_FUSION_TYPE_{t.upper()}" for t in INFERENCE_YNN_FUSION_TYPES)
  return {YNN_FLAG: ",".join(types)}


def heap_reuse(environ: dict | None = None) -> bool:
  """Whether CPU train programs split their temporaries for glibc to keep (`host_heap`): yes
  unless `SADM_CPU_HEAP_REUSE` or `SADM_XLA_CPU_DEFAULTS` is off."""
  env = os.environ if environ is None else environ
  return not (_switched_off(env) or _switched_off(env, host_heap.ENV_SWITCH))


def train_compiler_options(platform: str, environ: dict | None = None) -> dict | None:
  """Per-program XLA options of a train or validation step on `platform` (None: the process's
  flags): on CPU its temporaries in heaps of at most `CPU_HEAP_BYTES` (see `heap_reuse`),
  unless the user's `XLA_FLAGS` set that size themselves (theirs then applies)."""
  env = os.environ if environ is None else environ
  user_set = HEAP_FLAG in _parse_flags(env.get("XLA_FLAGS", ""))
  if platform != "cpu" or not heap_reuse(env) or user_set:
    return None
  return {HEAP_FLAG: CPU_HEAP_BYTES}


def _targets_cpu(env) -> bool:
  platforms = env.get("JAX_PLATFORMS") or env.get("JAX_PLATFORM_NAME") or ""
  if not platforms:
    return True  # auto-selection: CPU unless an accelerator plugin is installed (harmless there)
  return "cpu" in platforms.lower().split(",")


def with_defaults(xla_flags: str, stage: str | None = None) -> str:
  """`xla_flags` plus each default flag it does not name (the user's setting always wins)."""
  present = _flag_names(xla_flags)
  extra = [f for f in cpu_default_flags(stage) if f[2:].split("=", 1)[0] not in present]
  return " ".join([xla_flags.strip()] + extra if xla_flags.strip() else extra)


def apply(environ: dict | None = None, stage: str | None = None) -> list[str]:
  """Adds the defaults the user has not set to `XLA_FLAGS`; returns the flags it added.

  stage: the run's `config.stage` (`evaluate` gets one CPU device per core). Does nothing
  when `SADM_XLA_CPU_DEFAULTS` is '0'/'false' or JAX_PLATFORMS excludes 'cpu'. For this
  process's own environment (`environ` None) it also sets glibc to keep freed train-program
  temporaries (`host_heap.apply`) unless `heap_reuse` says no, and silences JAX's warning that
  such programs cannot be written to the persistent compilation cache.
  """
  env = os.environ if environ is None else environ
  if _switched_off(env):
    return []
  if not _targets_cpu(env):
    return []
  if environ is None and heap_reuse(env) and host_heap.apply():
    # XLA:CPU cannot serialise a program with several temporary heaps, so a big train step is
    # not written to the persistent compilation cache (it compiles at each start); JAX says so
    # with a warning at every such compilation, which is expected here and would only alarm.
    warnings.filterwarnings("ignore", category=UserWarning, message=CACHE_WARNING)
  before = env.get("XLA_FLAGS", "")
  after = with_defaults(before, stage)
  added = sorted(_flag_names(after) - _flag_names(before))
  if added:
    env["XLA_FLAGS"] = after
  return added


# A child process that makes XLA read XLA_FLAGS as the backend will (`flags_problem`).
_READ_FLAGS = "from jax._src.lib import _jax; _jax.CompileOptions()"


def flags_problem(environ: dict | None = None) -> str | None:
  """One line naming what in `XLA_FLAGS` this jaxlib cannot read — an unknown flag, a value it
  cannot interpret, a word without `--` (XLA takes it for a file of flags) — or None. XLA reads
  the variable when the backend starts and aborts the process in C++ on such a word (after
  listing every flag it knows for a bad value: hundreds of lines). Read in a child process
  (≈ 0.6 s), unless every flag is one the package sets with the package's value or a device count
  (`DEVICE_COUNT_FLAG`) of digits. Only XLA's own refusal counts: a child that fails otherwise (a
  jaxlib without the internal class it builds) says nothing about the flags, and the run goes on."""
  env = os.environ if environ is None else environ
  text = env.get("XLA_FLAGS", "").strip()
  if not text or not _needs_reading(text):
    return None
  try:
    proc = subprocess.run([sys.executable, "-c", _READ_FLAGS], env=dict(env), text=True,
                          capture_output=True, timeout=120)
  except (OSError, subprocess.TimeoutExpired):
    return None  # (not a verdict on the flags: the backend will tell)
  reason = _reason(proc.stderr) if proc.returncode else None
  return f"XLA_FLAGS={text}: {reason}" if reason else None


def _needs_reading(text: str) -> bool:
  """Whether `text` (XLA_FLAGS) holds a word the package does not itself know XLA reads."""
  if any(not w.startswith("--") for w in text.split()):
    return True
  own = {f[2:] for stage in (None, *INFERENCE_STAGES) for f in cpu_default_flags(stage)}
  return any(not (name == DEVICE_COUNT_FLAG and value.isdigit()) and f"{name}={value}" not in own
             for name, value in _parse_flags(text).items())


def _reason(stderr: str) -> str | None:
  """What XLA's flag parser said before it aborted, in a few words; None when it did not speak."""
  unknown = re.search(r"Unknown flags? in XLA_FLAGS: (.+)", stderr)
  if unknown:
    return f"XLA does not know {unknown.group(1).strip()} (a misspelt or removed flag?)"
  value = re.search(r"Couldn't interpret value (.*) for flag (\S+?)\.?$", stderr, re.M)
  if value:
    return f"XLA cannot read the value {value.group(1)!r} of --{value.group(2)}"
  file = re.search(r'Could not open file "(.*)" to read flags', stderr)
  if file:
    return (f"{file.group(1)!r} does not start with -- (XLA reads such a word as a file of flags, "
            "and there is none)")
  fatal = [ln.split("] ", 1)[-1] for ln in stderr.splitlines()
           if re.match(r"F\d{4} .*parse_flags_from_env", ln)]
  return fatal[-1].strip()[:300] if fatal else None
