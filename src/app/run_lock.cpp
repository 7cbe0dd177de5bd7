// RunLock: fcntl record lock on RUN/.lock with the holder's identity inside.
#include "app/run_lock.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

#include "core/error.hpp"

namespace hyperrnn {

namespace {
std::string holder_text() {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  const char* job = std::getenv("SLURM_JOB_ID");
  const std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return "host " + std::string(host) + ", pid " + std::to_string(getpid()) + (job ? ", Slurm job " + std::string(job) : "") +
         ", since " + when;
}
}  // namespace

namespace {
[[noreturn]] void in_use(int fd, const std::string& dir) {
  char buf[512] = {0};
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  ::close(fd);
  std::string who = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "another process";
  while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
  throw UsageError("option '--out': '" + dir + "' is in use by another hyperrnn run (" + who + "); wait for it, or choose another --out");
}
}  // namespace

void RunLock::check_free(const std::string& dir) {
  const std::string path = dir + "/" + file_name();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // no lock file: nobody has run here under a lock
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) in_use(fd, dir);
  ::close(fd);
}

void RunLock::acquire(const std::string& dir) {
  if (fd_ >= 0) return;
  const std::string path = dir + "/" + file_name();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw UsageError("option '--out': cannot create the lock file " + path + ": " + std::strerror(errno));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    const int err = errno;
    if (err == EACCES || err == EAGAIN) in_use(fd, dir);
    if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {  // no record locks on this filesystem
      std::fprintf(stderr, "hyperrnn: warning: %s: the filesystem does not support locks (%s); nothing stops a second run on this --out\n",
                   path.c_str(), std::strerror(err));
      ::close(fd);
      return;
    }
    ::close(fd);
    throw UsageError("option '--out': cannot lock " + path + ": " + std::strerror(err));
  }
  const std::string me = holder_text() + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    const int err = errno;
    ::close(fd);
    throw UsageError("option '--out': cannot write the lock file " + path + ": " + std::strerror(err));
  }
  fd_ = fd;
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  if (ftruncate(fd_, 0) != 0) {
  }  // the holder text is only for messages; an unlocked file with old text is harmless
  ::close(fd_);  // releases the lock
}

}  // namespace hyperrnn
