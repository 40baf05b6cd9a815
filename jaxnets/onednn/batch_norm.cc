// jaxnets' oneDNN batch normalisation (training) for XLA:CPU: forward with batch statistics, and its gradient.
//
// Activations are NHWC, float32 or bfloat16; scale, shift, mean and variance are float32 per channel (the
// variance is the biased one, as flax keeps it). One pass over the batch each way, where XLA:CPU runs several
// reductions and elementwise passes.
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace {

using namespace jaxnets_onednn;

const dnnl::normalization_flags kFlags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;

struct NormPlan {
  dnnl::primitive primitive;
};

dnnl::batch_normalization_forward::primitive_desc forward_desc(const memory::desc& x, float epsilon) {
  return dnnl::batch_normalization_forward::primitive_desc(cpu_engine(), dnnl::prop_kind::forward_training, x, x,
                                                           epsilon, kFlags);
}

ffi::Error check(ffi::AnyBuffer x, memory::data_type* type) {
  if (!onednn_type(x.element_type(), type))
    return ffi::Error::InvalidArgument("jaxnets oneDNN batch norm: float32 or bfloat16 activations only");
  if (x.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnets oneDNN batch norm: 4-D NHWC activations only");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                   ffi::Result<ffi::AnyBuffer> y, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> variance, float epsilon) {
  memory::data_type type;
  if (auto error = check(x, &type); error.failure()) return error;
  try {
    auto& engine = cpu_engine();
    auto x_md = activation(x.dimensions(), type);
    const auto& plan = cached<NormPlan>(key_of("bn-forward:" + std::to_string(static_cast<int>(type)) + ":" +
                                                   std::to_string(epsilon), {x.dimensions()}),
                                        [&] {
                                          auto pd = forward_desc(x_md, epsilon);
                                          return NormPlan{dnnl::batch_normalization_forward(pd)};
                                        });
    memory::desc channel({x.dimensions()[3]}, memory::data_type::f32, tag::x);
    std::lock_guard<std::mutex> one_at_a_time(running());
    dnnl::stream stream(engine);
    plan.primitive.execute(stream, {{DNNL_ARG_SRC, memory(x_md, engine, x.untyped_data())},
                                    {DNNL_ARG_DST, memory(x_md, engine, y->untyped_data())},
                                    {DNNL_ARG_SCALE, memory(channel, engine, scale.typed_data())},
                                    {DNNL_ARG_SHIFT, memory(channel, engine, shift.typed_data())},
                                    {DNNL_ARG_MEAN, memory(channel, engine, mean->typed_data())},
                                    {DNNL_ARG_VARIANCE, memory(channel, engine, variance->typed_data())}});
    stream.wait();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxnets oneDNN batch norm: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> mean,
                    ffi::Buffer<ffi::F32> variance, ffi::Result<ffi::AnyBuffer> dx,
                    ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dshift, float epsilon) {
  memory::data_type type;
  if (auto error = check(x, &type); error.failure()) return error;
  if (dy.element_type() != x.element_type())
    return ffi::Error::InvalidArgument("jaxnets oneDNN batch norm: the gradient must have the input's dtype");
  try {
    auto& engine = cpu_engine();
    auto x_md = activation(x.dimensions(), type);
    const auto& plan = cached<NormPlan>(key_of("bn-backward:" + std::to_string(static_cast<int>(type)) + ":" +
                                                   std::to_string(epsilon), {x.dimensions()}),
                                        [&] {
                                          dnnl::batch_normalization_backward::primitive_desc pd(
                                              engine, dnnl::prop_kind::backward, x_md, x_md, x_md, epsilon, kFlags,
                                              forward_desc(x_md, epsilon));
                                          return NormPlan{dnnl::batch_normalization_backward(pd)};
                                        });
    memory::desc channel({x.dimensions()[3]}, memory::data_type::f32, tag::x);
    std::lock_guard<std::mutex> one_at_a_time(running());
    dnnl::stream stream(engine);
    plan.primitive.execute(stream, {{DNNL_ARG_SRC, memory(x_md, engine, x.untyped_data())},
                                    {DNNL_ARG_DIFF_DST, memory(x_md, engine, dy.untyped_data())},
                                    {DNNL_ARG_SCALE, memory(channel, engine, scale.typed_data())},
                                    {DNNL_ARG_MEAN, memory(channel, engine, mean.typed_data())},
                                    {DNNL_ARG_VARIANCE, memory(channel, engine, variance.typed_data())},
                                    {DNNL_ARG_DIFF_SRC, memory(x_md, engine, dx->untyped_data())},
                                    {DNNL_ARG_DIFF_SCALE, memory(channel, engine, dscale->typed_data())},
                                    {DNNL_ARG_DIFF_SHIFT, memory(channel, engine, dshift->typed_data())}});
    stream.wait();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxnets oneDNN batch norm: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnBatchNormForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnBatchNormBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("epsilon"));
