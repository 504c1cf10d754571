// SHA-256 (FIPS 180-4), written for spaedge. Internal header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace spaedge {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t len);
  // Finishes the hash; the object must not be updated afterwards.
  void finish(uint8_t digest[32]);
  // Lowercase hex of the digest of `data`.
  static std::string hex(const void* data, size_t len);

  // Which compression function runs: "sha-ni" (x86 SHA extensions),
  // "armv8-sha2" or "portable". Chosen once from the CPU.
  static const char* implementation();
  // Tests: force the portable path (true) or go back to the CPU's choice.
  static void force_portable(bool on);

 private:
  void blocks(const uint8_t* p, size_t n);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string to_hex(const uint8_t* bytes, size_t n);

}  // namespace spaedge
