// jaxnets' oneDNN convolutions for XLA:CPU: forward, backward-data and backward-weights as one XLA FFI handler.
//
// Activations are NHWC and kernels HWIO (flax's layouts), float32 or bfloat16. oneDNN picks its own kernel
// layout (`format_tag::any`); the kernel is reordered to and from it on each call. Each distinct convolution's
// primitives are created once and kept (creating them costs more than running a small one). A call whose
// `threads` attribute is 1 is made and run on the calling thread alone (no OpenMP team: see `ThreadLimit`).
// With a bias (`JaxnetsOnednnConvolutionBias*`), the forward pass adds it and the weight gradient computes its
// gradient in the same pass (oneDNN's `diff_bias`): no separate sum over N, H, W in XLA.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace {

using namespace jaxnets_onednn;

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// The primitives of one convolution, made once per distinct shape/kind/dtype.
struct Plan {
  dnnl::primitive conv;
  bool bias = false;           // forward adds a bias / backward-weights also computes its gradient
  bool reorder = false;        // the primitive wants its kernel in another layout than HWIO
  dnnl::reorder kernel_copy;   // HWIO -> primitive layout (forward, backward-data) or back (backward-weights)
  memory::desc kernel_user, kernel_prim;
};

Plan make_plan(int64_t kind, bool bias, memory::data_type type, ffi::Span<const int64_t> a, ffi::Span<const int64_t> b,
               ffi::Span<const int64_t> out, const memory::dims& strides, const memory::dims& pad_l,
               const memory::dims& pad_r) {
  auto& engine = cpu_engine();
  auto algorithm = dnnl::algorithm::convolution_direct;
  auto training = dnnl::prop_kind::forward_training;
  dnnl::primitive_attr attr;  // scratchpad: oneDNN's own, one per thread
  Plan plan;
  plan.bias = bias;
  memory::desc src, dst;
  memory::dims wdims;
  if (kind == kForward) {
    src = activation(a, type), dst = activation(out, type), wdims = kernel_dims(b);
  } else if (kind == kBackwardData) {
    src = activation(out, type), dst = activation(a, type), wdims = kernel_dims(b);
  } else {
    src = activation(a, type), dst = activation(b, type), wdims = kernel_dims(out);
  }
  plan.kernel_user = memory::desc(wdims, type, tag::hwio);
  memory::desc kernel_any(wdims, type, tag::any);
  memory::desc bias_md({wdims[0]}, type, tag::x);
  auto forward = bias ? dnnl::convolution_forward::primitive_desc(engine, training, algorithm, src, kernel_any,
                                                                  bias_md, dst, strides, pad_l, pad_r, attr)
                      : dnnl::convolution_forward::primitive_desc(engine, training, algorithm, src, kernel_any, dst,
                                                                  strides, pad_l, pad_r, attr);
  if (kind == kForward) {
    plan.conv = dnnl::convolution_forward(forward);
    plan.kernel_prim = forward.weights_desc();
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(engine, algorithm, src, kernel_any, dst, strides, pad_l,
                                                       pad_r, forward, attr);
    plan.conv = dnnl::convolution_backward_data(pd);
    plan.kernel_prim = pd.weights_desc();
  } else {
    auto pd = bias ? dnnl::convolution_backward_weights::primitive_desc(engine, algorithm, src, kernel_any, bias_md,
                                                                       dst, strides, pad_l, pad_r, forward, attr)
                   : dnnl::convolution_backward_weights::primitive_desc(engine, algorithm, src, kernel_any, dst,
                                                                       strides, pad_l, pad_r, forward, attr);
    plan.conv = dnnl::convolution_backward_weights(pd);
    plan.kernel_prim = pd.diff_weights_desc();
  }
  plan.reorder = plan.kernel_prim != plan.kernel_user;
  if (plan.reorder) {
    plan.kernel_copy = kind == kBackwardWeights
                           ? dnnl::reorder(dnnl::reorder::primitive_desc(engine, plan.kernel_prim, engine,
                                                                         plan.kernel_user))
                           : dnnl::reorder(dnnl::reorder::primitive_desc(engine, plan.kernel_user, engine,
                                                                         plan.kernel_prim));
  }
  return plan;
}

std::string plan_key(int64_t kind, bool bias, int64_t threads, memory::data_type type, ffi::Span<const int64_t> a, ffi::Span<const int64_t> b,
                     ffi::Span<const int64_t> out, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> padding) {
  std::ostringstream key;
  key << kind << ':' << bias << ':' << threads << ':' << static_cast<int>(type);
  for (auto span : {a, b, out, strides, padding}) {
    key << '|';
    for (int64_t v : span) key << v << ',';
  }
  return key.str();
}

const Plan& find_plan(int64_t kind, bool bias, int64_t threads, memory::data_type type, ffi::Span<const int64_t> a, ffi::Span<const int64_t> b,
                      ffi::Span<const int64_t> out, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding) {
  return cached<Plan>(plan_key(kind, bias, threads, type, a, b, out, strides, padding), [&] {
    memory::dims s = {strides[0], strides[1]}, pad_l = {padding[0], padding[2]}, pad_r = {padding[1], padding[3]};
    return make_plan(kind, bias, type, a, b, out, s, pad_l, pad_r);
  });
}

// One call: `kind` on operands `a`, `b` into `out`. `bias` (forward: an input) or `bias_out` (backward-weights: the
// bias gradient) is an `[O]` buffer of the operands' dtype, or null without a bias.
ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer* bias, ffi::Result<ffi::AnyBuffer> out,
               ffi::Result<ffi::AnyBuffer>* bias_out, int64_t kind, ffi::Span<const int64_t> strides,
               ffi::Span<const int64_t> padding, int64_t threads) {
  memory::data_type type;
  switch (a.element_type()) {
    case ffi::DataType::F32: type = memory::data_type::f32; break;
    case ffi::DataType::BF16: type = memory::data_type::bf16; break;
    default: return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: float32 or bfloat16 operands only");
  }
  if (a.element_type() != b.element_type() || a.element_type() != out->element_type())
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: operands and result must share one dtype");
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4 || out->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: 4-D NHWC activations and HWIO kernels only");
  if (strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: 2 strides and 4 paddings (top, bottom, left, right)");
  if (kind != kForward && kind != kBackwardData && kind != kBackwardWeights)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: kind is 0 (forward), 1 (data) or 2 (weights)");
  if (threads != 0 && threads != 1)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: threads is 0 (all of oneDNN's) or 1");
  if (a.dimensions()[0] == 0) {  // a batch of no images: empty outputs, and zero weight (and bias) gradients,
    // which oneDNN would leave unwritten
    if (kind == kBackwardWeights) {
      std::memset(out->untyped_data(), 0, out->size_bytes());
      if (bias_out) std::memset((*bias_out)->untyped_data(), 0, (*bias_out)->size_bytes());
    }
    return ffi::Error::Success();
  }
  try {
    auto& engine = cpu_engine();
    ThreadLimit limit(threads);  // made and run with the same thread count (oneDNN plans its work at creation)
    const bool with_bias = bias != nullptr || bias_out != nullptr;
    const Plan& plan = find_plan(kind, with_bias, threads, type, a.dimensions(), b.dimensions(), out->dimensions(),
                                 strides, padding);
    memory::desc bias_md({plan.kernel_user.get_dims()[0]}, type, tag::x);
    std::unique_lock<std::mutex> one_at_a_time(running(), std::defer_lock);
    if (threads != 1) one_at_a_time.lock();
    dnnl::stream stream(engine);
    void* kernel_data = kind == kBackwardWeights ? out->untyped_data() : b.untyped_data();
    memory kernel_user(plan.kernel_user, engine, kernel_data);
    memory kernel = plan.reorder ? memory(plan.kernel_prim, engine) : kernel_user;
    if (plan.reorder && kind != kBackwardWeights)
      plan.kernel_copy.execute(stream, kernel_user, kernel);
    if (kind == kForward) {
      memory src(activation(a.dimensions(), type), engine, a.untyped_data());
      memory dst(activation(out->dimensions(), type), engine, out->untyped_data());
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, kernel}, {DNNL_ARG_DST, dst}};
      if (bias) args.insert({DNNL_ARG_BIAS, memory(bias_md, engine, bias->untyped_data())});
      plan.conv.execute(stream, args);
    } else if (kind == kBackwardData) {
      memory diff_dst(activation(a.dimensions(), type), engine, a.untyped_data());
      memory diff_src(activation(out->dimensions(), type), engine, out->untyped_data());
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, kernel},
                                 {DNNL_ARG_DIFF_SRC, diff_src}});
    } else {
      memory src(activation(a.dimensions(), type), engine, a.untyped_data());
      memory diff_dst(activation(b.dimensions(), type), engine, b.untyped_data());
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                           {DNNL_ARG_DIFF_WEIGHTS, kernel}};
      if (bias_out) args.insert({DNNL_ARG_DIFF_BIAS, memory(bias_md, engine, (*bias_out)->untyped_data())});
      plan.conv.execute(stream, args);
      if (plan.reorder) plan.kernel_copy.execute(stream, kernel, kernel_user);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("jaxnets oneDNN convolution: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxnets oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Convolution(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t kind,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, int64_t threads) {
  return Run(a, b, nullptr, out, nullptr, kind, strides, padding, threads);
}

// Bias checks shared by the two bias entry points: `[O]`, the operands' dtype.
ffi::Error check_bias(ffi::AnyBuffer a, ffi::DataType bias_type, ffi::Span<const int64_t> bias_dims, int64_t out) {
  if (bias_type != a.element_type())
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: the bias must have the operands' dtype");
  if (bias_dims.size() != 1 || bias_dims[0] != out)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: the bias must be [O], one per output channel");
  return ffi::Error::Success();
}

ffi::Error ConvolutionBiasForward(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer bias,
                                  ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
                                  ffi::Span<const int64_t> padding, int64_t threads) {
  if (kernel.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: 4-D NHWC activations and HWIO kernels only");
  if (auto error = check_bias(x, bias.element_type(), bias.dimensions(), kernel.dimensions()[3]); error.failure())
    return error;
  return Run(x, kernel, &bias, y, nullptr, kForward, strides, padding, threads);
}

ffi::Error ConvolutionBiasWeights(ffi::AnyBuffer x, ffi::AnyBuffer grad, ffi::Result<ffi::AnyBuffer> kernel_grad,
                                  ffi::Result<ffi::AnyBuffer> bias_grad, ffi::Span<const int64_t> strides,
                                  ffi::Span<const int64_t> padding, int64_t threads) {
  if (kernel_grad->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnets oneDNN convolution: 4-D NHWC activations and HWIO kernels only");
  if (auto error = check_bias(x, bias_grad->element_type(), bias_grad->dimensions(), kernel_grad->dimensions()[3]);
      error.failure())
    return error;
  return Run(x, grad, nullptr, kernel_grad, &bias_grad, kBackwardWeights, strides, padding, threads);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnConvolutionBiasForward, ConvolutionBiasForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnConvolutionBiasWeights, ConvolutionBiasWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnConvolution, Convolution,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<int64_t>("threads"));

// 1 when this CPU has oneDNN kernels for every call of the handlers in `type` (0: float32, 1: bfloat16), else 0:
// oneDNN 3.2 has no bfloat16 convolution or batch norm below AVX-512 (an AVX2-only CPU), and primitive creation
// is where that shows. Probed on a small convolution (forward, both gradients), a batch norm (forward, backward) and
// a matrix product (matmul.cc).
extern "C" int JaxnetsOnednnSupportsType(int type_code) {
  using namespace jaxnets_onednn;
  if (type_code != 0 && type_code != 1) return 0;
  auto type = type_code == 0 ? memory::data_type::f32 : memory::data_type::bf16;
  try {
    auto& engine = cpu_engine();
    memory::desc x({2, 16, 8, 8}, type, tag::nhwc), w({16, 16, 3, 3}, type, tag::any);
    memory::dims one = {1, 1};
    auto algorithm = dnnl::algorithm::convolution_direct;
    dnnl::convolution_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training, algorithm, x, w, x,
                                                      one, one, one);
    dnnl::convolution_backward_data::primitive_desc data(engine, algorithm, x, w, x, one, one, one, forward);
    dnnl::convolution_backward_weights::primitive_desc weights(engine, algorithm, x, w, x, one, one, one, forward);
    auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
    dnnl::batch_normalization_forward::primitive_desc norm(engine, dnnl::prop_kind::forward_training, x, x, 1e-5f,
                                                           flags);
    dnnl::batch_normalization_backward::primitive_desc norm_back(engine, dnnl::prop_kind::backward, x, x, x, 1e-5f,
                                                                 flags, norm);
    memory::desc a({4, 16}, type, tag::ab), b({16, 8}, type, tag::ab), c({4, 8}, type, tag::ab);
    dnnl::matmul::primitive_desc product(engine, a, b, c);
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

// The oneDNN version this file was built against, for jaxnets.describe().
extern "C" const char* JaxnetsOnednnVersion() {
  static std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    std::ostringstream text;
    text << v->major << '.' << v->minor << '.' << v->patch;
    return text.str();
  }();
  return version.c_str();
}
