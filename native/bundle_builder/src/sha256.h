// SHA-256 (FIPS 180-4) of a byte range as lowercase hex: the manifest's "sha256" of a variable's initial value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace bundle_builder {
std::string Sha256Hex(const uint8_t *data, size_t size);
}  // namespace bundle_builder
