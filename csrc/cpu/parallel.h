// A minimal parallel-for over independent items (images, transport problems), interruptible.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace topoot {

inline int resolve_threads(int num_threads, int64_t items) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, items)));
}

// Thrown out of a kernel when its call is cancelled: by a pending signal (Ctrl-C; the Python
// error is then set and the module's translator re-raises it) or by another worker's error.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

// How the calling thread asks whether a signal is pending: installed by the Python module
// (briefly takes the GIL, runs PyErr_CheckSignals; true when a handler raised). Null outside
// Python: nothing is polled.
inline bool (*&signal_pending())() {
  static bool (*check)() = nullptr;
  return check;
}

namespace detail {
struct Call {
  std::atomic<bool> cancel{false};
};
struct Local {
  Call* call = nullptr;
  bool caller = false;  // the thread that entered parallel_for (the one Python signals reach)
  std::chrono::steady_clock::time_point last{};
};
inline Local& local() {
  static thread_local Local l;
  return l;
}
// Signals are looked at at most this often (each look takes the GIL).
constexpr std::chrono::milliseconds kSignalPeriod{50};

// Whether a signal handler raised since the last look (at most every kSignalPeriod); marks the
// call cancelled when one did.
inline bool signal_raised(Local& l) {
  const auto now = std::chrono::steady_clock::now();
  if (now - l.last < kSignalPeriod) return false;
  l.last = now;
  if (signal_pending() && signal_pending()()) {
    l.call->cancel = true;
    return true;
  }
  return false;
}
}  // namespace detail

// Whether the current parallel_for call is cancelled, without throwing: for code compiled with
// target_clones (GCC's clones do not unwind reliably), which stops its loop and returns; the
// body's next poll() then throws. On the calling thread it also looks for pending signals, at
// most every 50 ms. Outside parallel_for: false.
inline bool interrupted() {
  detail::Local& l = detail::local();
  if (l.call == nullptr) return false;
  if (l.call->cancel.load(std::memory_order_relaxed)) return true;
  return l.caller && detail::signal_raised(l);
}

// Work between two polls, in matrix entries (a few milliseconds).
constexpr int64_t kPollEntries = int64_t{1} << 20;

// Called by kernels between coarse steps of long work (every few milliseconds of work at most,
// never in a tight loop): throws Interrupted when the call is cancelled (see interrupted()).
inline void poll() {
  if (interrupted()) throw Interrupted{};
}

namespace detail {
// Every pool's release function, so that release_scratch() reaches all of them.
inline std::mutex& pools_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<size_t (*)()>& pool_releasers() {
  static std::vector<size_t (*)()> r;
  return r;
}
}  // namespace detail

// The bytes of scratch a state holds: State::scratch_bytes() where it has one, else 0.
template <typename State, typename = void>
struct ScratchBytes {
  static size_t of(const State&) { return 0; }
};
template <typename State>
struct ScratchBytes<State, std::void_t<decltype(std::declval<const State&>().scratch_bytes())>> {
  static size_t of(const State& s) { return s.scratch_bytes(); }
};

// The scratch states (one type of State per kernel) that finished calls gave back. A worker of a
// later call takes one instead of building a new one, so its buffers' pages are already there:
// faulting in a 10k x 10k transport problem's 800 MB matrix anew was a fifth of the samples
// of a raw-noise selection. take() hands out the state holding the most scratch (ScratchBytes;
// equal ones last given back first): see parallel_for. Concurrent calls take different states.
// What stays allocated is one state per worker of the most parallel calls so far, until
// release_scratch().
template <typename State>
class StatePool {
 public:
  static std::unique_ptr<State> take() {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.free.empty()) return std::make_unique<State>();
    auto most = p.free.end() - 1;
    for (auto it = p.free.begin(); it != p.free.end(); ++it) {
      if (ScratchBytes<State>::of(**it) > ScratchBytes<State>::of(**most)) most = it;
    }
    std::unique_ptr<State> s = std::move(*most);
    p.free.erase(most);
    return s;
  }
  static void give(std::unique_ptr<State> s) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    p.free.push_back(std::move(s));
  }

 private:
  struct Pool {
    std::mutex mutex;
    std::vector<std::unique_ptr<State>> free;
  };
  static size_t release() {
    std::vector<std::unique_ptr<State>> gone;
    Pool& p = pool();
    {
      std::lock_guard<std::mutex> lock(p.mutex);
      gone.swap(p.free);
    }
    return gone.size();  // freed here, outside the lock
  }
  static Pool& pool() {
    static Pool* p = [] {
      std::lock_guard<std::mutex> lock(detail::pools_mutex());
      detail::pool_releasers().push_back(&release);
      return new Pool;  // never destroyed: a worker may give back during interpreter exit
    }();
    return *p;
  }
};

// Frees every scratch state no call is using; returns how many.
inline size_t release_scratch() {
  std::vector<size_t (*)()> releasers;
  {
    std::lock_guard<std::mutex> lock(detail::pools_mutex());
    releasers = detail::pool_releasers();
  }
  size_t n = 0;
  for (auto r : releasers) n += r();
  return n;
}

// Calls body(worker_state, i) for i in [0, n) on up to num_threads threads.
// Each worker owns one State (scratch buffers), taken from StatePool<State> and
// given back at the end, so that a caller that runs batch after batch does not
// fault fresh pages in every time. A worker takes its first item and its state under
// one lock, so the earlier item goes with the larger state: the kernels order their
// items largest first, so each state meets, call after call, the problems it grew for.
// (Taken in whatever order the threads started, a state could meet a larger matrix than
// it held and fault a whole new block in: over eight batches of different raw-noise maps,
// calls of 3.0 and 3.6 s among ones of 1.5 s; buffer.h's headroom covers the rest.)
// The calling thread is one of the workers. The first
// exception thrown by a body is rethrown here (the other workers stop at their
// next poll). When its own items are done, the calling thread keeps looking for
// signals while it waits for the others, so Ctrl-C is honoured within ~50 ms of
// the next poll of a worker.
template <typename State, typename Body>
void parallel_for(int64_t n, int num_threads, Body body) {
  const int threads = resolve_threads(num_threads, n);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex mutex;
  std::condition_variable finished;
  int running = threads - 1;
  detail::Call call;
  std::mutex start_mutex;
  auto start = [&]() {
    std::lock_guard<std::mutex> lock(start_mutex);
    const int64_t first = next.fetch_add(1);
    return std::make_pair(first, StatePool<State>::take());
  };
  auto run = [&](State& state, int64_t first) {
    try {
      for (int64_t i = first; i < n; i = next.fetch_add(1)) {
        poll();
        body(state, i);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
      next = n;
      call.cancel = true;
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back([&]() {
      detail::local() = detail::Local{&call, false, {}};
      auto [first, state] = start();
      run(*state, first);
      StatePool<State>::give(std::move(state));
      detail::local() = detail::Local{};
      std::lock_guard<std::mutex> lock(mutex);
      --running;
      finished.notify_one();
    });
  }
  detail::Local& me = detail::local();
  const detail::Local saved = me;
  me = detail::Local{&call, true, std::chrono::steady_clock::now()};
  auto [first, caller_state] = start();
  run(*caller_state, first);
  StatePool<State>::give(std::move(caller_state));
  {
    std::unique_lock<std::mutex> lock(mutex);
    while (running > 0) {
      if (finished.wait_for(lock, detail::kSignalPeriod, [&] { return running == 0; })) break;
      lock.unlock();
      const bool raised = detail::signal_raised(me);
      lock.lock();
      if (raised && !error) error = std::make_exception_ptr(Interrupted{});
    }
  }
  for (auto& th : pool) th.join();
  me = saved;
  // A kernel that stopped on interrupted() without a later poll() leaves only the flag.
  if (!error && call.cancel) error = std::make_exception_ptr(Interrupted{});
  if (error) std::rethrow_exception(error);
}

}  // namespace topoot
