"""benchmarks/torch_reference{,_nets}.py: presets equal the configs; no PyTorch -> exit 2."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import torch_reference as tr
from benchmarks import torch_reference_nets as trn
from configs import cddpm, default, demo, sadm_draem
from sadm_jax.models import factory


def _preset_of(model_config, sadm_config, batch):
  u, e = model_config.model.unet, model_config.model.encoder
  return dict(unet=(u.model_channels, tuple(u.channel_mult), u.num_res_blocks, u.num_head_channels,
                    u.num_groups),
              encoder=(tuple(e.stage_sizes), e.width, e.cond_dim),
              segnet_wf=sadm_config.sadm.segnet_wf, size=factory.slice_size(model_config),
              batch=batch)


def test_presets_match_the_configs():
  # paper: issue 13's side-by-side batch 4; demo/tiny: the configs' own batches.
  assert tr.PRESETS["paper"] == _preset_of(cddpm.get_config(), sadm_draem.get_config(), 4)
  d = demo.get_config()
  assert tr.PRESETS["demo"] == _preset_of(d, d, d.train.batch_size)
  t = cddpm.get_config("tiny")
  assert tr.PRESETS["tiny"] == _preset_of(t, sadm_draem.get_config("tiny"), t.train.batch_size)
  # Attention only in the middle block: the torch UNet has no other (as the paper config).
  assert tuple(default.get_config().model.unet.attention_resolutions) == ()
  assert default.get_config().model.encoder.drop_path_rate == trn.DROP_PATH_RATE


def test_paper_parameter_counts_are_the_packages():
  c = sadm_draem.get_config()

  def n(module, *args):  # tuple arguments are array shapes
    v = jax.eval_shape(lambda: module.init(
        jax.random.key(0), *[jnp.zeros(a) if isinstance(a, tuple) else a for a in args]))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"]))

  x = (2, 96, 96, 1)
  assert tr.PAPER_PARAMS == {
      "unet": n(factory.build_unet(c), x, (2,), (2, c.model.encoder.cond_dim)),
      "encoder": n(factory.build_encoder(c), x, False),
      "segnet": n(factory.build_segnet(c), x, x)}


def test_without_torch_exits_2_with_one_line(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  assert tr.main(["--size", "tiny"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "PyTorch is not installed" in err


@pytest.mark.parametrize("argv", [["--size", "huge"], ["--steps", "0"], ["--threads", "0"]])
def test_bad_arguments_are_usage_errors(argv):
  with pytest.raises(SystemExit) as e:
    tr.parse_args(argv)
  assert e.value.code == 2
