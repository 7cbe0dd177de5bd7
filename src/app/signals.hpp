// Stop signals (SIGTERM, SIGINT and --stop-signal, default SIGUSR2): the handler only records the
// signal; the training loop asks after every step, the ranks agree (a signal that reaches one rank
// stops all of them after the same step), and the run ends with a snapshot and exit status
// kExitStopped. A second SIGINT ends the process at once (the default action).
// Leaves out: what the loop does on a stop (train.cpp).
#pragma once
#include <string>

namespace hyperrnn {

// "stopped early with a snapshot; --resume auto continues" (sysexits' EX_TEMPFAIL).
constexpr int kExitStopped = 75;

// Installs the handlers. stop_signal: a name (SIGUSR2, USR2, TERM ...) or a number; UsageError
// otherwise.
void install_stop_handlers(const std::string& stop_signal);
// The signal number of --stop-signal; UsageError when it is not a catchable signal.
int check_stop_signal(const std::string& stop_signal);
// The signal received since installation (0 = none).
int stop_requested();
std::string signal_name(int sig);
int parse_signal(const std::string& s);  // -1 when not a signal

}  // namespace hyperrnn
