"""benchmarks/step_convs.py: convolutions read out of optimised HLO, classed, rebuilt and timed."""

import pytest

from benchmarks import step_convs

# Excerpt in the form XLA:CPU prints a train step (names, layouts and metadata as there).
HLO = """
ENTRY %main.1 (x: f32[16,64,64,1], k: f32[3,3,1,16]) -> f32[16,64,64,16] {
  %batch__image__.1 = f32[16,64,64,1]{3,2,1,0} parameter(0), metadata={op_name="batch['image']"}
  %copy.1 = f32[3,3,1,16]{3,2,1,0} parameter(1)
  %conv_general_dilated.183 = f32[16,64,64,16]{3,2,1,0} convolution(%batch__image__.1, %copy.1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(CDDPM)/unet/input_blocks_0/input_blocks_0._conv/conv_general_dilated" source_file="x.py" source_line=89}
  %transpose_copy_fusion.14 = f32[48,64,64,16]{3,2,1,0} fusion(%conv_general_dilated.183), kind=kLoop, calls=%fused_computation.14
  %transpose_copy_fusion.15 = f32[64,64,16,16]{3,2,1,0} fusion(%conv_general_dilated.183), kind=kLoop, calls=%fused_computation.15
  %convolution.93 = f32[48,1,1,16]{3,2,1,0} convolution(%transpose_copy_fusion.14, %transpose_copy_fusion.15), window={size=64x64}, dim_labels=b01f_01io->b01f
  %convolution.91 = f32[48,3,3,16]{3,2,1,0} convolution(%transpose_copy_fusion.14, %transpose_copy_fusion.15), window={size=64x64 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(CDDPM))/unet/output_blocks_4/res/in_conv/in_conv._conv/conv_general_dilated"}
  %bitcast_add_fusion.47 = f32[16,8,8,32]{3,2,1,0} fusion(%conv_general_dilated.183), kind=kLoop, calls=%fused_computation.16
  %transpose_copy_fusion.125 = f32[3,3,32,32]{3,2,1,0} fusion(%copy.1), kind=kLoop, calls=%fused_computation.17
  %convolution-base-dilated.5 = f32[16,16,16,32]{3,2,1,0} convolution(%bitcast_add_fusion.47, %transpose_copy_fusion.125), window={size=3x3 pad=1_2x1_2 lhs_dilate=2x2}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(CDDPM))/encoder/backbone/layer2_0/conv2/conv_general_dilated"}
  %copy_reverse_fusion = f32[4,4,128,16]{3,2,1,0} fusion(%copy.1), kind=kLoop, calls=%fused_computation.18
  %bitcast_add_fusion.55 = f32[128,2,2,128]{3,2,1,0} fusion(%copy.1), kind=kLoop, calls=%fused_computation.19
  %x4 = f32[16,4,4,128]{3,2,1,0} parameter(2)
  %k4 = f32[3,3,128,128]{3,2,1,0} parameter(3)
  %conv_general_dilated.180 = f32[16,2,2,128]{3,2,1,0} convolution(%x4, %k4), window={size=3x3 stride=2x2 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(CDDPM)/encoder/backbone/layer4_0/conv2/conv_general_dilated"}
  %a4 = f32[128,4,4,16]{3,2,1,0} parameter(4)
  %g4 = f32[2,2,16,128]{3,2,1,0} parameter(5)
  %convolution-window-dilated.9 = f32[128,3,3,128]{3,2,1,0} convolution(%a4, %g4), window={size=2x2 pad=1_0x1_0 rhs_dilate=2x2}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(CDDPM))/encoder/backbone/layer4_0/conv2/conv_general_dilated"}
  %x5 = f32[2,8,8,16]{3,2,1,0} parameter(6)
  %k5 = f32[3,3,4,16]{3,2,1,0} parameter(7)
  %grouped.1 = f32[2,8,8,16]{3,2,1,0} convolution(%x5, %k5), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, feature_group_count=4, metadata={op_name="jit(f)/conv_general_dilated"}
  ROOT %convolution-base-dilated.1 = f32[16,4,4,128]{3,2,1,0} convolution(%copy_reverse_fusion, %bitcast_add_fusion.55), window={size=2x2 pad=1_2x1_2 rhs_dilate=2x2 rhs_reversal=1x1}, dim_labels=01fb_o01i->f01b, metadata={op_name="jit(train_step)/transpose(jvp(CDDPM))/encoder/backbone/layer4_0/conv2/conv_general_dilated"}
}
"""


def test_parses_every_convolution_with_its_operand_shapes_and_role():
  convs = {c["name"]: c for c in step_convs.parse_convolutions(HLO)}
  assert list(convs) == ["conv_general_dilated.183", "convolution.93", "convolution.91",
                         "convolution-base-dilated.5", "conv_general_dilated.180",
                         "convolution-window-dilated.9", "grouped.1",
                         "convolution-base-dilated.1"]
  fwd = convs["conv_general_dilated.183"]
  assert fwd["lhs_shape"] == (16, 64, 64, 1) and fwd["rhs_shape"] == (3, 3, 1, 16)
  assert fwd["out_shape"] == (16, 64, 64, 16) and fwd["role"] == "forward"
  assert fwd["window"] == {"size": (3, 3), "strides": (1, 1), "padding": [(1, 1), (1, 1)],
                           "lhs_dilation": (1, 1), "rhs_dilation": (1, 1)}
  # XLA-made (no op name) and transposed ones: weight gradients span the activation
  assert convs["convolution.93"]["role"] == "weight gradient"
  assert convs["convolution.93"]["op_name"] == ""
  assert convs["convolution.91"]["role"] == "weight gradient"
  assert convs["convolution-base-dilated.5"]["role"] == "input gradient"
  assert convs["convolution-base-dilated.5"]["window"]["lhs_dilation"] == (2, 2)
  # a 3×3 kernel's gradient on a 2×2 activation: more output pixels than window pixels, but
  # the output has the forward conv's kernel shape
  assert convs["convolution-window-dilated.9"]["role"] == "weight gradient"
  assert convs["conv_general_dilated.180"]["role"] == "forward"
  assert convs["grouped.1"]["feature_group_count"] == 4
  assert convs["grouped.1"]["batch_group_count"] == 1
  dx = convs["convolution-base-dilated.1"]
  assert dx["role"] == "input gradient"
  assert dx["window"]["rhs_dilation"] == (2, 2) and dx["window"]["padding"] == [(1, 2), (1, 2)]


def test_dimension_numbers_and_flops():
  assert step_convs.dimension_numbers("b01f_01io->b01f") == ("NHWC", "HWIO", "NHWC")
  assert step_convs.dimension_numbers("01fb_o01i->f01b") == ("HWCN", "OHWI", "CHWN")
  convs = {c["name"]: c for c in step_convs.parse_convolutions(HLO)}
  # forward 3×3, 1 → 16 channels on 16 × 64 × 64: 2 × (16·64·64·16 outputs) × 9
  assert step_convs.flops(convs["conv_general_dilated.183"]) == 2.0 * 16 * 64 * 64 * 16 * 9
  # a 1×1 conv's weight gradient: 48 × 16 outputs, each a sum over 64 × 64 × 16
  assert step_convs.flops(convs["convolution.93"]) == 2.0 * 48 * 16 * 64 * 64 * 16
  # grouped: each output sees C_in / groups = 4 input channels
  assert step_convs.flops(convs["grouped.1"]) == 2.0 * 2 * 8 * 8 * 16 * 9 * 4
  with pytest.raises(SystemExit, match="not a 2-D convolution"):
    step_convs.dimension_numbers("b012f_012io->b012f")


def test_operand_that_is_not_float32_is_a_clear_error():
  hlo = HLO.replace("%copy.1 = f32[3,3,1,16]", "%copy.1 = bf16[3,3,1,16]")
  with pytest.raises(SystemExit, match="conv_general_dilated.183: operand copy.1 is not float32"):
    step_convs.parse_convolutions(hlo)


def test_rebuilt_convolution_has_the_hlo_output_shape_and_a_time():
  conv = step_convs.parse_convolutions(HLO)[-1]  # HWCN × OHWI -> CHWN, dilated, padded
  conv = dict(conv, lhs_shape=(4, 4, 8, 2), rhs_shape=(8, 2, 2, 8), out_shape=(8, 5, 5, 2))
  assert step_convs.time_convolution(conv, iters=2) > 0
  with pytest.raises(RuntimeError, match="HLO says"):
    step_convs.time_convolution(dict(conv, out_shape=(8, 4, 4, 2)), iters=1)


def test_summary_totals_per_role():
  convs = [{"role": "forward", "seconds": 0.002, "flops": 4e8},
           {"role": "weight gradient", "seconds": 0.004, "flops": 4e8},
           {"role": "weight gradient", "seconds": 0.004, "flops": 4e8}]
  table = step_convs.summarise(convs)
  assert table["weight gradient"] == {"count": 2, "seconds": 0.008, "gflop": 0.8,
                                      "gflop_per_s": pytest.approx(100.0)}
  assert table["input gradient"]["count"] == 0 and table["input gradient"]["gflop_per_s"] is None
  assert table["all"]["count"] == 3 and table["all"]["gflop"] == pytest.approx(1.2)



# Convolutions XLA:CPU keeps in the tiny inference programs (it turns unstrided 1×1 convolutions
# into dots): the cDDPM's 27 with a window larger than 1×1 plus the ResNet encoder's 3 strided
# 1×1 downsample convolutions (layers 2-4), the SegUnet's 17 (all larger than 1×1).
TINY_INFER_CONVS = {"cddpm reconstruction": 30, "segunet": 17}


def test_infer_mode_reads_both_inference_programs(tmp_path, monkeypatch):
  monkeypatch.setattr(step_convs, "time_convolution", lambda conv, iters: 1e-3)  # timed above
  out = tmp_path / "convs.json"
  result = step_convs.main(["--program", "infer", "--size", "tiny", "--slices", "2", "--iters",
                            "1", "--top", "3", "--out", str(out)])
  assert out.exists() and result["program"] == "infer" and result["slices"] == 2
  programs = result["programs"]
  assert list(programs) == list(TINY_INFER_CONVS)
  assert all(p["program_s"] > 0 for p in programs.values())
  assert {n: p["table"]["all"]["count"] for n, p in programs.items()} == TINY_INFER_CONVS
  convs = result["convolutions"]
  assert {c["role"] for c in convs} == {"forward"}  # inference: no gradients
  # the 2 slices are the batch; the SegUnet's siamese encoder runs on both inputs at once
  batches = sorted((c["program"], c["lhs_shape"][0]) for c in convs)
  assert batches == sorted([("cddpm reconstruction", 2)] * 30 + [("segunet", 2)] * 9
                           + [("segunet", 4)] * 8)
  downsample = [c for c in convs if "downsample_conv" in c["op_name"]]
  assert len(downsample) == 3 and all(c["window"]["strides"] == (2, 2) for c in downsample)
  assert result["table"]["all"]["seconds"] == pytest.approx(1e-3 * 47)


def test_infer_mode_rejects_no_slices():
  with pytest.raises(SystemExit, match="--slices must be"):
    step_convs.main(["--program", "infer", "--size", "tiny", "--slices", "0"])
