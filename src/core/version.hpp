// The code version recorded in snapshots: project version and git commit of the build.
#pragma once

namespace hyperrnn {
const char* code_version();
}
