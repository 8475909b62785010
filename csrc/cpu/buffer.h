// A growable scratch array whose new entries are left uninitialised.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace topoot {

// Blocks of at least this many bytes are aligned to 2 MiB and, on Linux, advised to be backed by
// transparent huge pages (the default "madvise" mode honours only advised ranges): one TLB entry
// then covers 512 times the memory, which matters to the union-find, whose finds land at random
// places of a parent forest and a map of tens of MB. Elsewhere, or when the kernel declines, they
// are ordinary pages.
constexpr size_t kHugePage = size_t{1} << 21;

inline void* allocate_scratch(size_t bytes) {
  if (bytes < kHugePage) {
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    return p;
  }
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, rounded, MADV_HUGEPAGE);  // advice only: a refusal leaves ordinary pages
#endif
  return p;
}

struct FreeScratch {
  void operator()(void* p) const { std::free(p); }
};

// std::vector value-initialises what it grows by: a zero fill that faults every page in at once,
// seconds for the 10^8-entry matrices of large transport problems, with no chance to poll for
// Ctrl-C in between. Here the pages are faulted in by the first writes, inside the kernels'
// polled loops. The contents are not kept when it grows (scratch only). T must be trivial.
// A large block grows to a quarter more than asked: its pages are only address space until
// written, and a later problem a little larger (the next image's diagrams) then fits in the
// pages already faulted in instead of faulting in a whole new block.
template <typename T>
class Buffer {
 public:
  void resize(size_t n) {
    if (n > capacity_) {
      data_.reset();  // the old block goes first: never two large blocks at once
      const size_t want = n * sizeof(T) < kHugePage ? n : n + n / 4;
      data_.reset(static_cast<T*>(allocate_scratch(want * sizeof(T))));
      capacity_ = want;
    }
    size_ = n;
  }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  T& operator[](size_t i) { return data_.get()[i]; }
  const T& operator[](size_t i) const { return data_.get()[i]; }

 private:
  std::unique_ptr<T, FreeScratch> data_;
  size_t size_ = 0, capacity_ = 0;
};

}  // namespace topoot
