// A minimal parallel-for over independent items (images, transport problems).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace topoot {

inline int resolve_threads(int num_threads, int64_t items) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, items)));
}

// Calls body(worker_state, i) for i in [0, n) on up to num_threads threads.
// Each worker owns one State (scratch buffers); the calling thread is one of
// the workers and keeps its State between calls, so that a caller that runs
// batch after batch does not fault fresh pages in every time. The first
// exception thrown by a body is rethrown here.
template <typename State, typename Body>
void parallel_for(int64_t n, int num_threads, Body body) {
  const int threads = resolve_threads(num_threads, n);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](State& state) {
    try {
      for (int64_t i; (i = next.fetch_add(1)) < n;) body(state, i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back([&run]() {
      State state;
      run(state);
    });
  }
  static thread_local State caller_state;
  run(caller_state);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace topoot
