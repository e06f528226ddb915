// The one schema block of fastconv: every operator's signature, nothing else.
// Kernels are registered per device in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL);
// autograd and fake (meta) kernels are registered from Python in fastconv/_ops.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "common/build_info.h"

// Importing fastconv._C runs the static registrations below; the module itself has no Python API.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(fastconv, m) {
  // Convolution. `algo` is "im2col" or "direct" (the Python layer resolves "auto").
  // Backward ops take an output mask (grad_input, grad_weight, grad_bias) and return an empty tensor
  // for every gradient that is not asked for.
  m.def("conv1d(Tensor input, Tensor weight, Tensor? bias, int[1] stride, int[1] padding, int[1] dilation, "
        "int groups, str algo) -> Tensor");
  m.def("conv1d_backward(Tensor grad_output, Tensor input, Tensor weight, int[1] stride, int[1] padding, "
        "int[1] dilation, int groups, bool[3] output_mask, str algo) -> (Tensor, Tensor, Tensor)");
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str algo) -> Tensor");
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, bool[3] output_mask, str algo) -> (Tensor, Tensor, Tensor)");
  // Bytes of scratch memory the given algorithm allocates for this conv2d (the im2col column buffer).
  m.def("conv2d_workspace_bytes(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str algo) -> int");

  // Pooling over the last two dims of a (C, H, W) or (N, C, H, W) input. 1-D pooling uses H == 1.
  // Indices are int64 positions in the flattened H x W input plane, as torch returns them.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode) -> (Tensor, Tensor)");
  // The values alone, for inputs that need no gradient (no indices computed).
  m.def("max_pool2d_values(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "bool ceil_mode) -> Tensor");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
        "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
        "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
        "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor input, int[2] output_size) -> (Tensor, Tensor)");
  m.def("adaptive_max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices) -> Tensor");

  // Build description for `python -m fastconv`: CUDA architectures and CPU instruction set.
  m.def("build_info() -> str", [] { return fastconv::build_info(); });
}
