// What this build of fastconv contains, as one "key=value;..." string for `python -m fastconv`.
#pragma once

#include <string>

#include "common/cpu_features.h"

namespace fastconv {

inline std::string build_info() {
  std::string info;
#ifdef FASTCONV_WITH_CUDA
  info += "cuda=1;";
#else
  info += "cuda=0;";
#endif
  info += "cpu_isa=" + std::string(cpu_isa_name(active_cpu_isa())) + ";";
  return info;
}

}  // namespace fastconv
