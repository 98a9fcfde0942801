"""benchmarks/cpu_profile.py: perf report lines put in categories and entry points, shares conserved."""

import pytest

from benchmarks import cpu_profile

SELF = """
# Overhead       Samples  Shared Object      Symbol
    50.00%          5000  [JIT] tid 23028     [.] 0x00007f48180180ec
    13.00%          1300  libjax_common.so    [.] Eigen::internal::gemm_pack_colmajor_block<float, long, Eigen::internal::TensorContractionSubMapper<float, long, 0, Eigen::TensorEvaluator<Eigen::TensorReshapingOp<Eigen::DSizes<long, 2> const, Eigen::TensorImagePatchOp<-1l, -1l, Eigen::TensorMap<Eigen::Tensor<float const, 4, 1, long>, 16, Eigen::MakePointer> const> const> const, Eigen::ThreadPoolDevice>, Eigen::array<long, 1ul>, 8, true, false, 0, Eigen::MakePointer>, 0>::operator()
     6.00%           600  [kernel.kallsyms]   [k] clear_page_erms
     3.00%           300  [kvm]               [k] kvm_clock_read
     1.00%           100  [unknown]           [k] 0xffffffff81000000
     3.00%           300  libjax_common.so    [.] Eigen::RunQueue<tsl::thread::EigenEnvironment::Task, 1024u>::PopBack
     2.00%           200  libjax_common.so    [.] xla::cpu::ThunkExecutor::Execute<xla::cpu::ThunkExecutor::FifoReadyQueue>
     1.00%           100  libjax_common.so    [.] Eigen::TensorEvaluator<Eigen::TensorContractionOp<Eigen::array<Eigen::IndexPair<long>, 1ul> const, Eigen::NoOpOutputKernel const> const, Eigen::ThreadPoolDevice>::EvalParallelContext<Eigen::TensorEvaluator<Eigen::TensorContractionOp<Eigen::array<Eigen::IndexPair<long>, 1ul> const> const, Eigen::ThreadPoolDevice>, true, false, false, 0>::pack_lhs
     0.50%            50  libjax_common.so    [.] dnnl::impl::cpu::x64::gemm_driver<float, float, float>
     1.00%           100  libc.so.6           [.] _int_malloc
     0.50%            50  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault
     0.00%          1900  [unknown]           [.] 0x0000000000001234
"""
CHILDREN = """
    74.10%     0.00%  [.] Eigen::ThreadPoolTempl<tsl::thread::EigenEnvironment>::WorkerLoop
    34.73%     0.01%  [.] xla::cpu::Kernel::Launch
    15.43%     0.01%  [.] absl::internal_any_invocable::LocalInvoker<false, void, xla::cpu::ConvolutionThunk::HandleEigen2DConvolution(xla::cpu::Thunk::ExecuteParams const&)::{lambda()#1}&>
     1.32%     0.00%  [.] xla::cpu::ConvolutionThunk::HandleEigen2DConvolution
     8.00%     0.00%  [k] asm_exc_page_fault
     0.79%     0.01%  [.] xla::cpu::DotThunk::Execute
"""


def test_bare_drops_template_arguments():
  assert cpu_profile.bare("a::B<c<d>, e>::f<g>") == "a::B::f"
  assert cpu_profile.bare("0x00007f48180180ec") == "0x00007f48180180ec"


def test_entry_points_take_the_largest_matching_inclusive_share():
  assert cpu_profile.inclusive(CHILDREN) == {
      "XLA's fusion kernels (Kernel::Launch)": 34.73,
      "convolutions (ConvolutionThunk, Eigen)": 15.43,
      "dots (DotThunk)": 0.79,
      "page faults": 8.0}
  assert set(cpu_profile.inclusive("")) == set(cpu_profile.ENTRY_POINTS)


def test_self_samples_in_categories_with_faults_taken_out_of_kernel_time():
  """Shares of all samples by their counts; kernel samples by their [k] mark, whatever the DSO;
  Eigen code run on the thread pool (ThreadPoolDevice in its template arguments) is tensor code,
  not scheduling; the kernel's page-fault samples get their own category."""
  shares = cpu_profile.categorise(SELF, 8.0)
  assert shares[cpu_profile.CATEGORIES[0][0]] == 50.0  # JIT code, DSO with spaces in its name
  assert shares["convolution patch packing (Eigen)"] == 13.0  # before the tensor-code catch-all
  assert shares["thread pool and scheduling"] == 5.0
  assert shares["other Eigen / oneDNN tensor and contraction code"] == 1.5
  assert shares["glibc malloc"] == 1.0
  assert shares[cpu_profile.PAGE_FAULTS] == 8.0
  assert shares["other kernel time"] == pytest.approx(2.0)  # 6 + 3 ([kvm]) + 1 ([unknown]) - 8
  assert shares[cpu_profile.OTHER] == pytest.approx(19.5)  # counted by samples, not its 0.00 %
  assert sum(shares.values()) == pytest.approx(100.0)  # every line counted once
  # More fault samples than kernel self samples (unwinding differences): capped, never negative.
  capped = cpu_profile.categorise(SELF, 30.0)
  assert capped[cpu_profile.PAGE_FAULTS] == 10.0 and capped["other kernel time"] == 0.0
