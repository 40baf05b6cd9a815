// jaxnets' oneDNN matrix product for XLA:CPU: `out = op(a) @ op(b)`, op a transpose or not, as one FFI handler.
//
// What a dense layer needs in its forward pass and both gradients without a transpose pass in XLA: `x @ w`,
// `g @ w^T` (input gradient) and `x^T @ g` (weight gradient). Operands are row-major 2-D float32 or bfloat16
// buffers of one dtype; a transposed operand is described to oneDNN by its strides, not copied. The result is
// float32 or bfloat16, accumulated in float32 either way (a bfloat16 weight gradient can come out in float32
// directly, for float32 weights). Each distinct product's primitive is made once and kept. `threads` as in
// convolution.cc: 1 runs the call on the calling thread alone. `JaxnetsOnednnMatmulWeightsBias` is the weight
// gradient with the bias gradient (the output gradient's column sums, float32) from the same call, where XLA:CPU
// would convert the gradient and sum it in separate passes.
#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"

namespace {

using namespace jaxnets_onednn;

struct MatmulPlan {
  dnnl::matmul primitive;
  memory::desc a, b, out;
};

// A `rows x cols` matrix stored row-major, or (transposed) stored as the row-major `cols x rows` matrix.
memory::desc matrix(int64_t rows, int64_t cols, memory::data_type type, bool transposed) {
  return memory::desc({rows, cols}, type, transposed ? memory::dims{1, rows} : memory::dims{cols, 1});
}

// `sums[n] = sum over m of g[m, n]` in float32: a bias gradient, from the output gradient `g` ([M, N], float32 or
// bfloat16, row-major). One pass, row by row (contiguous reads); bfloat16 is the upper half of a float32.
void column_sums(const void* g, memory::data_type type, int64_t m, int64_t n, float* sums) {
  for (int64_t j = 0; j < n; ++j) sums[j] = 0.0f;
  for (int64_t i = 0; i < m; ++i) {
    if (type == memory::data_type::f32) {
      const float* row = static_cast<const float*>(g) + i * n;
      for (int64_t j = 0; j < n; ++j) sums[j] += row[j];
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(g) + i * n;
      for (int64_t j = 0; j < n; ++j) {
        uint32_t bits = static_cast<uint32_t>(row[j]) << 16;
        float value;
        std::memcpy(&value, &bits, sizeof value);
        sums[j] += value;
      }
    }
  }
}

ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, float* bias_sums,
               int64_t transpose_a, int64_t transpose_b, int64_t threads) {
  memory::data_type type, out_type;
  if (!onednn_type(a.element_type(), &type) || !onednn_type(out->element_type(), &out_type))
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: float32 or bfloat16 operands and result only");
  if (b.element_type() != a.element_type())
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: both operands must share one dtype");
  if (a.dimensions().size() != 2 || b.dimensions().size() != 2 || out->dimensions().size() != 2)
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: 2-D operands and result only");
  if ((transpose_a != 0 && transpose_a != 1) || (transpose_b != 0 && transpose_b != 1))
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: transpose_a and transpose_b are 0 or 1");
  if (threads != 0 && threads != 1)
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: threads is 0 (all of oneDNN's) or 1");
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  const int64_t m = transpose_a ? ad[1] : ad[0], k = transpose_a ? ad[0] : ad[1];
  const int64_t kb = transpose_b ? bd[1] : bd[0], n = transpose_b ? bd[0] : bd[1];
  if (k != kb || od[0] != m || od[1] != n)
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: shapes do not chain: op(a) is [M, K], op(b) [K, N], "
                                       "the result [M, N]");
  if (m == 0 || n == 0) return ffi::Error::Success();  // an empty result: nothing to write
  if (k == 0) {  // an empty sum (a batch of no rows): zeros, which oneDNN would leave unwritten
    std::memset(out->untyped_data(), 0, out->size_bytes());
    if (bias_sums) column_sums(b.untyped_data(), type, k, n, bias_sums);
    return ffi::Error::Success();
  }
  try {
    auto& engine = cpu_engine();
    ThreadLimit limit(threads);  // made and run with the same thread count (oneDNN plans its work at creation)
    const int64_t flags[] = {transpose_a, transpose_b, threads, static_cast<int64_t>(type),
                             static_cast<int64_t>(out_type)};
    const auto& plan = cached<MatmulPlan>(key_of("matmul", {ffi::Span<const int64_t>(flags, 5), ad, bd}), [&] {
      MatmulPlan made;
      made.a = matrix(m, k, type, transpose_a);
      made.b = matrix(k, n, type, transpose_b);
      made.out = matrix(m, n, out_type, false);
      made.primitive = dnnl::matmul(dnnl::matmul::primitive_desc(engine, made.a, made.b, made.out));
      return made;
    });
    std::unique_lock<std::mutex> one_at_a_time(running(), std::defer_lock);
    if (threads != 1) one_at_a_time.lock();
    dnnl::stream stream(engine);
    plan.primitive.execute(stream, {{DNNL_ARG_SRC, memory(plan.a, engine, a.untyped_data())},
                                    {DNNL_ARG_WEIGHTS, memory(plan.b, engine, b.untyped_data())},
                                    {DNNL_ARG_DST, memory(plan.out, engine, out->untyped_data())}});
    stream.wait();
    if (bias_sums) column_sums(b.untyped_data(), type, k, n, bias_sums);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jaxnets oneDNN matmul: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t transpose_a,
                  int64_t transpose_b, int64_t threads) {
  return Run(a, b, out, nullptr, transpose_a, transpose_b, threads);
}

// A dense layer's weight and bias gradients in one call: `x^T @ g` and the column sums of `g` (float32).
ffi::Error WeightsBias(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> kernel_grad,
                       ffi::ResultBuffer<ffi::F32> bias_grad, int64_t threads) {
  if (g.dimensions().size() != 2 || bias_grad->dimensions().size() != 1 ||
      bias_grad->dimensions()[0] != g.dimensions()[1])
    return ffi::Error::InvalidArgument("jaxnets oneDNN matmul: the bias gradient must be [N] for a [M, N] gradient");
  return Run(x, g, kernel_grad, bias_grad->typed_data(), 1, 0, threads);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose_a")
                                  .Attr<int64_t>("transpose_b")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetsOnednnMatmulWeightsBias, WeightsBias,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("threads"));
