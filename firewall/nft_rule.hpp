#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/ip_address.hpp"

struct nftnl_rule;
struct nftnl_expr;

namespace splitd::firewall {

struct NftnlRuleDeleter {
  void operator()(nftnl_rule* r) const noexcept;
};

// Builds the expressions of one nftables rule with libnftnl, in the order nft would
// (matches, then statements, then the verdict). Each method appends the expressions of
// one nft phrase; the comment is stored in the rule's userdata so `nft list` shows it.
// Remembers which kernel modules its expressions need, for error messages. Value type,
// move-only, not thread-safe.
class NftRule {
 public:
  explicit NftRule(std::string comment);
  ~NftRule();
  NftRule(NftRule&&) noexcept;
  NftRule& operator=(NftRule&&) noexcept;

  NftRule& meta_mark_eq(std::uint32_t mark);                         // meta mark MARK
  NftRule& meta_mark_neq(std::uint32_t mark);                        // meta mark != MARK
  NftRule& iif_eq(std::uint32_t ifindex);                            // iif IFINDEX
  // iifname "NAME": by name, so it also matches before the interface exists (the form
  // nft and iptables-nft use, `-i NAME`; both list it back).
  NftRule& iifname_eq(std::string_view name);
  NftRule& nfproto_eq(std::uint8_t nfproto);                         // meta nfproto ipv4|ipv6
  NftRule& l4proto_in(std::vector<std::uint8_t> protos);             // meta l4proto P / { P, Q }
  NftRule& ct_direction_eq(std::uint8_t dir);                        // ct direction original|reply
  NftRule& fib_daddr_type_in(std::vector<std::uint32_t> rtn_types);  // fib daddr type { ... }
  NftRule& daddr_in_set(IpAddress::Family family, std::string set);  // ip(6) daddr @set
  NftRule& socket_transparent();                                     // socket transparent 1
  NftRule& th_dport_eq(std::uint16_t port);  // th dport PORT (needs l4proto tcp/udp before it)
  NftRule& reject_port_unreachable();        // reject with icmpx port-unreachable
  NftRule& tcp_not_syn();  // tcp flags & (syn | ack) != syn (needs l4proto tcp before it)
  NftRule& set_mark(std::uint32_t mark);                             // meta mark set MARK
  NftRule& ct_mark_neq(std::uint32_t mark);                          // ct mark != MARK
  NftRule& set_ct_mark(std::uint32_t mark);                          // ct mark set MARK
  NftRule& tproxy_to_port(std::uint16_t port);  // tproxy to :PORT (both families)
  NftRule& oif_neq(std::uint32_t ifindex);      // oif != IFINDEX
  NftRule& counter();                           // counter (packets and bytes, `nft list` shows them)
  NftRule& accept();                            // accept

  const std::string& comment() const { return comment_; }
  // Kernel modules the rule's expressions need beyond nf_tables ("nft_ct, nft_tproxy").
  std::string needs() const;

  // An anonymous constant set that a lookup of this rule refers to; NftBatch sends it
  // before the rule and gives it a set id.
  struct AnonymousSet {
    std::uint32_t key_type = 0;  // nft datatype id (how `nft list` prints the keys)
    std::uint32_t key_len = 0;
    std::uint32_t byteorder = 0;  // nft's byte order of the key (userdata)
    std::vector<std::vector<std::uint8_t>> keys;
    nftnl_expr* lookup = nullptr;  // owned by the rule; gets the set id
  };
  std::vector<AnonymousSet>& anonymous_sets() { return anonymous_sets_; }
  nftnl_rule* get() { return rule_.get(); }

 private:
  void add(nftnl_expr* e);
  void need(std::string_view module);
  void cmp(std::uint32_t op, const void* data, std::uint32_t len);
  void load_immediate(const void* data, std::uint32_t len);  // data into the register

  std::unique_ptr<nftnl_rule, NftnlRuleDeleter> rule_;
  std::string comment_;
  std::vector<std::string> needs_;
  std::vector<AnonymousSet> anonymous_sets_;
};

}  // namespace splitd::firewall
