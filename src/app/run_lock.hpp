// One run per run directory at a time: an advisory POSIX record lock (fcntl F_SETLK) on RUN/.lock,
// which the kernel (or, on NFS, the lock manager) releases when the holding process ends in any
// way, kill -9 included, so a lock left by a dead process never blocks --resume. The file names
// the holder (host, pid, Slurm job id, start time) for the refusal message; it is never unlinked
// (unlinking would let two processes lock two different files of the same name).
// Leaves out: what the run writes (train.cpp).
#pragma once
#include <string>

namespace hyperrnn {

class RunLock {
 public:
  RunLock() = default;
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  // Locks DIR/.lock (DIR must exist). Throws UsageError naming --out and the holder when another
  // process holds it. On a filesystem without record locks it warns once and runs unlocked.
  void acquire(const std::string& dir);
  bool held() const { return fd_ >= 0; }
  // Throws the same UsageError when DIR/.lock exists and another process holds it; writes nothing.
  static void check_free(const std::string& dir);
  static const char* file_name() { return ".lock"; }

 private:
  int fd_ = -1;
};

}  // namespace hyperrnn
