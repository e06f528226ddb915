// Autograd for every fastconv operator, registered in C++ at the Autograd key for all devices.
//
// Each forward op is a torch::autograd::Function: it saves what its backward op needs and calls the op
// again below autograd (the CPU, CUDA or fake kernel). Doing this in C++ rather than through
// torch.library.register_autograd keeps Python out of every call: the Python route cost about 8 us per
// op call, more than a small pooling kernel itself. The backward ops are not differentiable: their
// outputs carry a node that raises if a second derivative reaches it, instead of a silently wrong one.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using IntList = c10::IntArrayRef;
using ConvGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::vector<int64_t> as_vector(IntList values) { return values.vec(); }
std::vector<int64_t> saved_ints(AutogradContext* ctx, const char* key) {
  return ctx->saved_data[key].toIntList().vec();
}

// Whether a call records autograd history: grad mode on and some tensor input requiring a gradient.
// Calls that do not skip the autograd Function altogether.
bool records_history(std::initializer_list<const at::Tensor*> tensors) {
  return at::GradMode::is_enabled() &&
         std::any_of(tensors.begin(), tensors.end(), [](const at::Tensor* t) { return t->defined() && t->requires_grad(); });
}

// ---------------------------------------------------------------------------------------------
// Backward ops: computed below autograd; a second derivative through them raises.
// ---------------------------------------------------------------------------------------------

struct NotDifferentiable : torch::autograd::Function<NotDifferentiable> {
  // `inputs` are the op's tensor inputs (so the outputs are linked to them); `compute` runs the op.
  static variable_list forward(AutogradContext* ctx, const std::string& op, const std::function<variable_list()>& compute,
                               at::TensorList inputs) {
    (void)inputs;
    ctx->saved_data["op"] = op;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return compute();
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK(false, "fastconv::", ctx->saved_data["op"].toStringRef(),
                " is not differentiable: gradients of gradients (double backward) through fastconv are not "
                "supported; use torch.nn.functional for that computation");
  }
};

// A backward op's outputs: plain below-autograd results, or (when a graph is being built over them, as
// under create_graph=True) outputs whose gradient raises.
variable_list not_differentiable(const char* op, const variable_list& inputs,
                                 const std::function<variable_list()>& compute) {
  const bool record = at::GradMode::is_enabled() &&
                      std::any_of(inputs.begin(), inputs.end(), [](const at::Tensor& t) { return t.requires_grad(); });
  if (!record) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return compute();
  }
  // As a TensorList, so that apply() links the outputs to these tensors (a vector would be taken as an
  // opaque argument).
  return NotDifferentiable::apply(std::string(op), compute, at::TensorList(inputs));
}

template <size_t Dims>
ConvGradients conv_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                     IntList stride, IntList padding, IntList dilation, int64_t groups,
                                     std::array<bool, 3> output_mask, const std::string& algo) {
  using Sig = ConvGradients(const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, int64_t,
                            std::array<bool, 3>, const std::string&);
  static const auto op = op_handle<Sig>(Dims == 1 ? "fastconv::conv1d_backward" : "fastconv::conv2d_backward");
  const variable_list out = not_differentiable(
      Dims == 1 ? "conv1d_backward" : "conv2d_backward",
      {grad_output, input, weight}, [&]() -> variable_list {
        auto [gi, gw, gb] = op.call(grad_output, input, weight, stride, padding, dilation, groups, output_mask, algo);
        return {gi, gw, gb};
      });
  return {out[0], out[1], out[2]};
}

at::Tensor max_pool2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& indices, IntList kernel_size, IntList stride,
                                        IntList padding, IntList dilation, bool ceil_mode) {
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, IntList,
                         bool);
  static const auto op = op_handle<Sig>("fastconv::max_pool2d_backward");
  return not_differentiable("max_pool2d_backward", {grad_output, input}, [&]() -> variable_list {
    return {op.call(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode)};
  })[0];
}

at::Tensor avg_pool2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input, IntList kernel_size,
                                        IntList stride, IntList padding, bool ceil_mode, bool count_include_pad,
                                        std::optional<int64_t> divisor_override) {
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, IntList, IntList, IntList, bool, bool,
                         std::optional<int64_t>);
  static const auto op = op_handle<Sig>("fastconv::avg_pool2d_backward");
  return not_differentiable("avg_pool2d_backward", {grad_output, input}, [&]() -> variable_list {
    return {op.call(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)};
  })[0];
}

at::Tensor adaptive_avg_pool2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&)>(
      "fastconv::adaptive_avg_pool2d_backward");
  return not_differentiable("adaptive_avg_pool2d_backward", {grad_output, input},
                            [&]() -> variable_list { return {op.call(grad_output, input)}; })[0];
}

at::Tensor adaptive_max_pool2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                                 const at::Tensor& indices) {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
      "fastconv::adaptive_max_pool2d_backward");
  return not_differentiable("adaptive_max_pool2d_backward", {grad_output, input},
                            [&]() -> variable_list { return {op.call(grad_output, input, indices)}; })[0];
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

template <size_t Dims>
const auto& conv_op() {
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, IntList, IntList,
                         IntList, int64_t, const std::string&);
  static const auto op = op_handle<Sig>(Dims == 1 ? "fastconv::conv1d" : "fastconv::conv2d");
  return op;
}

template <size_t Dims>
struct ConvFunction : torch::autograd::Function<ConvFunction<Dims>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, IntList stride, IntList padding, IntList dilation,
                            int64_t groups, const std::string& algo) {
    ctx->save_for_backward({input, weight});
    ctx->saved_data["stride"] = as_vector(stride);
    ctx->saved_data["padding"] = as_vector(padding);
    ctx->saved_data["dilation"] = as_vector(dilation);
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["algo"] = algo;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv_op<Dims>().call(input, weight, bias, stride, padding, dilation, groups, algo);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    auto [gi, gw, gb] = conv_backward_autograd<Dims>(
        grads[0], saved[0], saved[1], saved_ints(ctx, "stride"), saved_ints(ctx, "padding"),
        saved_ints(ctx, "dilation"), ctx->saved_data["groups"].toInt(), mask, ctx->saved_data["algo"].toStringRef());
    // One entry per forward argument: input, weight, bias, then the five non-tensor arguments.
    return {mask[0] ? gi : at::Tensor(), mask[1] ? gw : at::Tensor(), mask[2] ? gb : at::Tensor(),
            at::Tensor(),           at::Tensor(),           at::Tensor(),           at::Tensor(),
            at::Tensor()};
  }
};

template <size_t Dims>
at::Tensor conv_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         IntList stride, IntList padding, IntList dilation, int64_t groups, const std::string& algo) {
  const at::Tensor no_bias;
  if (!records_history({&input, &weight, bias.has_value() ? &*bias : &no_bias})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return conv_op<Dims>().call(input, weight, bias, stride, padding, dilation, groups, algo);
  }
  return ConvFunction<Dims>::apply(input, weight, bias, stride, padding, dilation, groups, algo);
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

const auto& max_pool2d_op() {
  static const auto op =
      op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList, IntList, IntList, IntList, bool)>(
          "fastconv::max_pool2d");
  return op;
}

struct MaxPool2dFunction : torch::autograd::Function<MaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, IntList kernel_size, IntList stride,
                               IntList padding, IntList dilation, bool ceil_mode) {
    at::Tensor out, indices;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, indices) = max_pool2d_op().call(input, kernel_size, stride, padding, dilation, ceil_mode);
    }
    ctx->save_for_backward({input, indices});
    ctx->saved_data["kernel_size"] = as_vector(kernel_size);
    ctx->saved_data["stride"] = as_vector(stride);
    ctx->saved_data["padding"] = as_vector(padding);
    ctx->saved_data["dilation"] = as_vector(dilation);
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->mark_non_differentiable({indices});
    return {out, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad_input = max_pool2d_backward_autograd(
        grads[0], saved[0], saved[1], saved_ints(ctx, "kernel_size"), saved_ints(ctx, "stride"),
        saved_ints(ctx, "padding"), saved_ints(ctx, "dilation"), ctx->saved_data["ceil_mode"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_autograd(const at::Tensor& input, IntList kernel_size, IntList stride,
                                                       IntList padding, IntList dilation, bool ceil_mode) {
  if (!records_history({&input})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return max_pool2d_op().call(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  const variable_list out = MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

const auto& avg_pool2d_op() {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, IntList, IntList, IntList, bool, bool,
                                              std::optional<int64_t>)>("fastconv::avg_pool2d");
  return op;
}

struct AvgPool2dFunction : torch::autograd::Function<AvgPool2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, IntList kernel_size, IntList stride,
                            IntList padding, bool ceil_mode, bool count_include_pad,
                            std::optional<int64_t> divisor_override) {
    ctx->save_for_backward({input});
    ctx->saved_data["kernel_size"] = as_vector(kernel_size);
    ctx->saved_data["stride"] = as_vector(stride);
    ctx->saved_data["padding"] = as_vector(padding);
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return avg_pool2d_op().call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const c10::IValue& divisor = ctx->saved_data["divisor_override"];
    at::Tensor grad_input = avg_pool2d_backward_autograd(
        grads[0], saved[0], saved_ints(ctx, "kernel_size"), saved_ints(ctx, "stride"), saved_ints(ctx, "padding"),
        ctx->saved_data["ceil_mode"].toBool(), ctx->saved_data["count_include_pad"].toBool(),
        divisor.isNone() ? std::nullopt : std::optional<int64_t>(divisor.toInt()));
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor avg_pool2d_autograd(const at::Tensor& input, IntList kernel_size, IntList stride, IntList padding,
                               bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  if (!records_history({&input})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return avg_pool2d_op().call(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  }
  return AvgPool2dFunction::apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                  divisor_override);
}

const auto& adaptive_avg_pool2d_op() {
  static const auto op = op_handle<at::Tensor(const at::Tensor&, IntList)>("fastconv::adaptive_avg_pool2d");
  return op;
}

struct AdaptiveAvgPool2dFunction : torch::autograd::Function<AdaptiveAvgPool2dFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, IntList output_size) {
    ctx->save_for_backward({input});
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return adaptive_avg_pool2d_op().call(input, output_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {adaptive_avg_pool2d_backward_autograd(grads[0], ctx->get_saved_variables()[0]), at::Tensor()};
  }
};

at::Tensor adaptive_avg_pool2d_autograd(const at::Tensor& input, IntList output_size) {
  if (!records_history({&input})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return adaptive_avg_pool2d_op().call(input, output_size);
  }
  return AdaptiveAvgPool2dFunction::apply(input, output_size);
}

const auto& adaptive_max_pool2d_op() {
  static const auto op = op_handle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, IntList)>(
      "fastconv::adaptive_max_pool2d");
  return op;
}

struct AdaptiveMaxPool2dFunction : torch::autograd::Function<AdaptiveMaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, IntList output_size) {
    at::Tensor out, indices;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, indices) = adaptive_max_pool2d_op().call(input, output_size);
    }
    ctx->save_for_backward({input, indices});
    ctx->mark_non_differentiable({indices});
    return {out, indices};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    return {adaptive_max_pool2d_backward_autograd(grads[0], saved[0], saved[1]), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d_autograd(const at::Tensor& input, IntList output_size) {
  if (!records_history({&input})) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return adaptive_max_pool2d_op().call(input, output_size);
  }
  const variable_list out = AdaptiveMaxPool2dFunction::apply(input, output_size);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, Autograd, m) {
  m.impl("conv1d", &conv_autograd<1>);
  m.impl("conv2d", &conv_autograd<2>);
  m.impl("conv1d_backward", &conv_backward_autograd<1>);
  m.impl("conv2d_backward", &conv_backward_autograd<2>);
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("max_pool2d_backward", &max_pool2d_backward_autograd);
  m.impl("avg_pool2d", &avg_pool2d_autograd);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_autograd);
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_autograd);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_autograd);
  m.impl("adaptive_max_pool2d", &adaptive_max_pool2d_autograd);
  m.impl("adaptive_max_pool2d_backward", &adaptive_max_pool2d_backward_autograd);
}

}  // namespace fastconv
