// The PEM files slimd serves TLS with, checked before gRPC sees them, so that a wrong file is
// reported as what it is ("--tls-key: does not match the certificate in --tls-cert") instead of
// gRPC's "cannot listen".
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace slim::server {

struct TlsFiles {
  std::string cert_chain_pem, private_key_pem, client_ca_pem;  // client_ca_pem may be empty
};

// What errors call the three files: slimd's flags, or another configuration's setting names.
struct TlsFileSettings {
  std::string cert = "--tls-cert", key = "--tls-key", client_ca = "--tls-client-ca";
};

// Reads and checks them: each file readable and PEM of the right kind (certificates, a private
// key), and the key the one of the chain's first certificate. INVALID_ARGUMENT naming the
// setting (`settings`) and the file.
absl::StatusOr<TlsFiles> ReadTlsFiles(const std::string& cert_path, const std::string& key_path,
                                      const std::string& client_ca_path, const TlsFileSettings& settings = {});

}  // namespace slim::server
