// The architecture registry: every supported family, keyed by config.json `architectures[0]` (and aliases).
// Registration is explicit: register_all() lists the families once (docs/architecture.md#registries).
#pragma once

#include <string>
#include <vector>

#include "converter/architectures/architecture.h"

namespace linearize {

// The family for `hf_name`; throws InputError(file, "architectures", ...) listing the supported names.
const Architecture& find_architecture(const std::string& hf_name, const std::string& file);

// Every registered family, in registration order.
const std::vector<Architecture>& architectures();

}  // namespace linearize
