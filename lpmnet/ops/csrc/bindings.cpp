// The one extension module of lpmnet's CPU kernels (lpmnet/ops/build.py compiles it from
// lpmnet/ops/csrc/*.cpp and lpmnet/methods/*/csrc/*.cpp). It names no operation: each source registers
// the functions it defines (lpmnet_kernels::Register, common.h), and the module's init adds them all.

#include "common.h"

namespace lpmnet_kernels {

std::vector<Registrar>& registrars() {
  static std::vector<Registrar> all;  // function-local: constructed on first use, whatever the link order
  return all;
}

}  // namespace lpmnet_kernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lpmnet CPU kernels (the functions each source of lpmnet/ops/build.py registers)";
#ifdef LPMNET_KERNEL_KEY  // what it was compiled from (lpmnet.ops.build.kernel_key), a bare token of hex digits
#define LPMNET_STRING(x) #x
#define LPMNET_EXPANDED_STRING(x) LPMNET_STRING(x)
  m.attr("kernel_key") = LPMNET_EXPANDED_STRING(LPMNET_KERNEL_KEY);
#endif
  for (lpmnet_kernels::Registrar define : lpmnet_kernels::registrars()) define(m);
}
