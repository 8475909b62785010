// A growable scratch array whose new entries are left uninitialised.
#pragma once

#include <cstddef>
#include <memory>

namespace topoot {

// std::vector value-initialises what it grows by: a zero fill that faults every page in at once,
// seconds for the 10^8-entry matrices of large transport problems, with no chance to poll for
// Ctrl-C in between. Here the pages are faulted in by the first writes, inside the kernels'
// polled loops. The contents are not kept when it grows (scratch only).
template <typename T>
class Buffer {
 public:
  void resize(size_t n) {
    if (n > capacity_) {
      data_.reset();  // the old block goes first: never two large blocks at once
      data_.reset(new T[n]);
      capacity_ = n;
    }
    size_ = n;
  }
  size_t size() const { return size_; }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  std::unique_ptr<T[]> data_;
  size_t size_ = 0, capacity_ = 0;
};

}  // namespace topoot
