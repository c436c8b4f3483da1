#pragma once

#include <cstdint>
#include <span>

#include "sniff/sniff.hpp"

namespace splitd::sniff {

// TLS ClientHello parsing for the name (RFC 8446 §4.1.2, RFC 6066 §3 server_name, the
// ECH draft's encrypted_client_hello extension 0xfe0d). Pure functions of their input:
// bounded (kMaxClientHello), no allocation but the name, never read past the span.

// `stream` is the start of a TCP stream: TLS records (content type 22, handshake), their
// payloads concatenated into the handshake message, which may span many records and
// arrive in any number of pieces. kNotThis when the first record is not a handshake
// record of TLS 1.0-1.3 or its first message is not a ClientHello.
Result sniff_tls(std::span<const std::uint8_t> stream);

// `handshake` is the handshake layer (as QUIC's CRYPTO frames carry it): a message type
// byte (1 = ClientHello), a 24-bit length and the body, maybe not all of it yet.
Result parse_client_hello(std::span<const std::uint8_t> handshake);

}  // namespace splitd::sniff
