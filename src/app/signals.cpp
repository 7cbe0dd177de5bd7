// Stop signals: an async-signal-safe flag; SIGINT twice = the default action.
#include "app/signals.hpp"

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"

namespace hyperrnn {

namespace {
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop(int sig) {
  if (sig == SIGINT && g_signal == SIGINT) {  // the second ^C: abort now
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  g_signal = sig;
}

struct Named {
  const char* name;
  int sig;
};
constexpr Named kSignals[] = {{"TERM", SIGTERM}, {"INT", SIGINT}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
                              {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"XCPU", SIGXCPU}, {"ALRM", SIGALRM}};
}  // namespace

int parse_signal(const std::string& s) {
  std::string n = s;
  if (n.rfind("SIG", 0) == 0) n = n.substr(3);
  for (const Named& k : kSignals)
    if (n == k.name) return k.sig;
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (!s.empty() && end && *end == '\0' && v > 0 && v < 65) return static_cast<int>(v);
  return -1;
}

std::string signal_name(int sig) {
  for (const Named& k : kSignals)
    if (k.sig == sig) return std::string("SIG") + k.name;
  return "signal " + std::to_string(sig);
}

int check_stop_signal(const std::string& stop_signal) {
  const int sig = parse_signal(stop_signal);
  if (sig < 0 || sig == SIGKILL || sig == SIGSTOP)
    throw UsageError("option '--stop-signal': must be a catchable signal name (e.g. SIGUSR2, USR1, TERM) or number, got '" +
                     stop_signal + "'");
  return sig;
}

void install_stop_handlers(const std::string& stop_signal) {
  const int extra = check_stop_signal(stop_signal);
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, extra}) sigaction(sig, &sa, nullptr);
}

int stop_requested() { return static_cast<int>(g_signal); }

}  // namespace hyperrnn
