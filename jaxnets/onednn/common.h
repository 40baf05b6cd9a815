// What jaxnets' oneDNN handlers share: the engine, NHWC descriptors, the primitive cache, the one-at-a-time lock.
#ifndef JAXNETS_ONEDNN_COMMON_H_
#define JAXNETS_ONEDNN_COMMON_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace jaxnets_onednn {

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

inline dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// An NHWC activation as oneDNN's logical (N, C, H, W) dims in an nhwc layout.
inline memory::desc activation(ffi::Span<const int64_t> d, memory::data_type type) {
  return memory::desc({d[0], d[3], d[1], d[2]}, type, tag::nhwc);
}

// An HWIO kernel as oneDNN's logical (O, I, H, W) dims.
inline memory::dims kernel_dims(ffi::Span<const int64_t> d) { return {d[3], d[2], d[0], d[1]}; }

// Primitives made once per distinct key and kept for the process (made under a lock; used without one).
template <class T, class Make>
const T& cached(const std::string& key, Make make) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::unique_ptr<T>> made;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = made.find(key);
  if (found != made.end()) return *found->second;
  return *made.emplace(key, std::make_unique<T>(make())).first->second;
}

// One multi-threaded oneDNN call at a time: each takes all of oneDNN's threads, and two OpenMP teams at once
// (XLA runs independent calls, e.g. both gradients, side by side) overbook the cores and stall on each other.
// Single-threaded calls (`ThreadLimit(1)`) start no team and need no turn.
inline std::mutex& running() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace jaxnets_onednn

// OpenMP's per-thread team size (libgomp, which oneDNN's `-gomp` build links); declared here so that no
// OpenMP header or flag is needed to compile.
extern "C" int omp_get_max_threads();
extern "C" void omp_set_num_threads(int);

namespace jaxnets_onednn {

// While alive, oneDNN calls made on this thread use `threads` threads (0: leave OpenMP's default). With 1,
// oneDNN runs the call inline on this (XLA's) thread: a small convolution then never waits at an OpenMP
// barrier for a second thread that XLA's own thread pool is keeping off the core (a ~4 ms scheduler tick).
// The setting belongs to the calling thread only; it is put back on the way out.
class ThreadLimit {
 public:
  explicit ThreadLimit(int64_t threads) : threads_(threads), before_(omp_get_max_threads()) {
    if (threads_ > 0) omp_set_num_threads(static_cast<int>(threads_));
  }
  ~ThreadLimit() {
    if (threads_ > 0) omp_set_num_threads(before_);
  }
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int64_t threads_;
  int before_;
};

// The oneDNN data type of an XLA buffer: float32 or bfloat16, else false.
inline bool onednn_type(ffi::DataType type, memory::data_type* out) {
  if (type == ffi::DataType::F32) return *out = memory::data_type::f32, true;
  if (type == ffi::DataType::BF16) return *out = memory::data_type::bf16, true;
  return false;
}

// A key of the primitive cache: a name, then each span's values.
inline std::string key_of(const std::string& name, std::initializer_list<ffi::Span<const int64_t>> spans) {
  std::ostringstream key;
  key << name;
  for (auto span : spans) {
    key << '|';
    for (int64_t v : span) key << v << ',';
  }
  return key.str();
}

}  // namespace jaxnets_onednn

#endif  // JAXNETS_ONEDNN_COMMON_H_
