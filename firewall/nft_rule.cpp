#include "firewall/nft_rule.hpp"

#include <arpa/inet.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <net/if.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace splitd::firewall {
namespace {

// nft's datatype ids and byte orders (nftables include/datatype.h, include/expression.h):
// anonymous sets carry them so `nft list` prints `{ tcp, udp }`, not numbers.
constexpr std::uint32_t kTypeInetProtocol = 12;
constexpr std::uint32_t kTypeFibAddrType = 38;
constexpr std::uint32_t kByteorderHost = 1;

constexpr std::uint32_t kReg = NFT_REG_1;

// Offsets of the destination address in the network header.
constexpr std::uint32_t kIpv4DaddrOffset = 16;
constexpr std::uint32_t kIpv6DaddrOffset = 24;

nftnl_expr* make(const char* name) {
  nftnl_expr* e = nftnl_expr_alloc(name);
  if (e == nullptr) throw std::bad_alloc();
  return e;
}

nftnl_expr* meta_load(std::uint32_t key) {
  nftnl_expr* e = make("meta");
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, kReg);
  return e;
}

}  // namespace

void NftnlRuleDeleter::operator()(nftnl_rule* r) const noexcept { nftnl_rule_free(r); }

NftRule::NftRule(std::string comment) : rule_(nftnl_rule_alloc()), comment_(std::move(comment)) {
  if (!rule_) throw std::bad_alloc();
  if (comment_.size() >= NFTNL_UDATA_COMMENT_MAXLEN)
    comment_.resize(NFTNL_UDATA_COMMENT_MAXLEN - 1);
  nftnl_udata_buf* ud = nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN);
  if (ud == nullptr) throw std::bad_alloc();
  nftnl_udata_put_strz(ud, NFTNL_UDATA_RULE_COMMENT, comment_.c_str());
  nftnl_rule_set_data(rule_.get(), NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud),
                      nftnl_udata_buf_len(ud));
  nftnl_udata_buf_free(ud);
}

NftRule::~NftRule() = default;
NftRule::NftRule(NftRule&&) noexcept = default;
NftRule& NftRule::operator=(NftRule&&) noexcept = default;

void NftRule::add(nftnl_expr* e) { nftnl_rule_add_expr(rule_.get(), e); }

void NftRule::need(std::string_view module) {
  if (std::find(needs_.begin(), needs_.end(), module) == needs_.end()) needs_.emplace_back(module);
}

std::string NftRule::needs() const {
  std::string out;
  for (const auto& m : needs_) {
    if (!out.empty()) out += ", ";
    out += m;
  }
  return out;
}

void NftRule::cmp(std::uint32_t op, const void* data, std::uint32_t len) {
  nftnl_expr* e = make("cmp");
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, kReg);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
  nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
  add(e);
}

NftRule& NftRule::meta_mark_eq(std::uint32_t mark) {
  add(meta_load(NFT_META_MARK));
  cmp(NFT_CMP_EQ, &mark, sizeof mark);
  return *this;
}

NftRule& NftRule::meta_mark_neq(std::uint32_t mark) {
  add(meta_load(NFT_META_MARK));
  cmp(NFT_CMP_NEQ, &mark, sizeof mark);
  return *this;
}

NftRule& NftRule::iif_eq(std::uint32_t ifindex) {
  add(meta_load(NFT_META_IIF));
  cmp(NFT_CMP_EQ, &ifindex, sizeof ifindex);
  return *this;
}

NftRule& NftRule::iifname_eq(std::string_view name) {
  // Compared as IFNAMSIZ bytes, zero padded, as nft does: an exact match, not a prefix.
  char padded[IFNAMSIZ] = {};
  std::memcpy(padded, name.data(), std::min(name.size(), sizeof padded - 1));
  add(meta_load(NFT_META_IIFNAME));
  cmp(NFT_CMP_EQ, padded, sizeof padded);
  return *this;
}

NftRule& NftRule::nfproto_eq(std::uint8_t nfproto) {
  add(meta_load(NFT_META_NFPROTO));
  cmp(NFT_CMP_EQ, &nfproto, sizeof nfproto);
  return *this;
}

NftRule& NftRule::l4proto_in(std::vector<std::uint8_t> protos) {
  add(meta_load(NFT_META_L4PROTO));
  if (protos.size() == 1) {
    cmp(NFT_CMP_EQ, &protos.front(), 1);
    return *this;
  }
  AnonymousSet set;
  set.key_type = kTypeInetProtocol;
  set.key_len = 1;
  set.byteorder = kByteorderHost;
  for (auto p : protos) set.keys.push_back({p});
  set.lookup = make("lookup");
  nftnl_expr_set_u32(set.lookup, NFTNL_EXPR_LOOKUP_SREG, kReg);
  nftnl_expr_set_str(set.lookup, NFTNL_EXPR_LOOKUP_SET, "__set%d");
  add(set.lookup);
  anonymous_sets_.push_back(std::move(set));
  return *this;
}

NftRule& NftRule::ct_direction_eq(std::uint8_t dir) {
  nftnl_expr* e = make("ct");
  nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_DIRECTION);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, kReg);
  add(e);
  cmp(NFT_CMP_EQ, &dir, sizeof dir);
  need("nft_ct");
  return *this;
}

NftRule& NftRule::fib_daddr_type_in(std::vector<std::uint32_t> rtn_types) {
  nftnl_expr* e = make("fib");
  nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
  nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
  nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_DREG, kReg);
  add(e);
  need("nft_fib_inet");
  AnonymousSet set;
  set.key_type = kTypeFibAddrType;
  set.key_len = sizeof(std::uint32_t);
  set.byteorder = kByteorderHost;
  for (std::uint32_t t : rtn_types) {
    std::vector<std::uint8_t> k(sizeof t);
    std::memcpy(k.data(), &t, sizeof t);
    set.keys.push_back(std::move(k));
  }
  set.lookup = make("lookup");
  nftnl_expr_set_u32(set.lookup, NFTNL_EXPR_LOOKUP_SREG, kReg);
  nftnl_expr_set_str(set.lookup, NFTNL_EXPR_LOOKUP_SET, "__set%d");
  add(set.lookup);
  anonymous_sets_.push_back(std::move(set));
  return *this;
}

NftRule& NftRule::daddr_in_set(IpAddress::Family family, std::string set) {
  const bool v4 = family == IpAddress::Family::kV4;
  // In an inet table a network-header load needs the family as a dependency.
  nfproto_eq(v4 ? NFPROTO_IPV4 : NFPROTO_IPV6);
  nftnl_expr* e = make("payload");
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, v4 ? kIpv4DaddrOffset : kIpv6DaddrOffset);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, v4 ? 4 : 16);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, kReg);
  add(e);
  nftnl_expr* l = make("lookup");
  nftnl_expr_set_u32(l, NFTNL_EXPR_LOOKUP_SREG, kReg);
  nftnl_expr_set_str(l, NFTNL_EXPR_LOOKUP_SET, set.c_str());
  add(l);
  return *this;
}

NftRule& NftRule::socket_transparent() {
  nftnl_expr* e = make("socket");
  nftnl_expr_set_u32(e, NFTNL_EXPR_SOCKET_KEY, NFT_SOCKET_TRANSPARENT);
  nftnl_expr_set_u32(e, NFTNL_EXPR_SOCKET_DREG, kReg);
  add(e);
  const std::uint8_t one = 1;
  cmp(NFT_CMP_EQ, &one, sizeof one);
  need("nft_socket");
  return *this;
}

NftRule& NftRule::th_dport_eq(std::uint16_t port) {
  constexpr std::uint32_t kDportOffset = 2;  // the same in TCP and UDP headers
  const std::uint16_t be = htons(port);
  nftnl_expr* e = make("payload");
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, kDportOffset);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, sizeof be);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, kReg);
  add(e);
  cmp(NFT_CMP_EQ, &be, sizeof be);
  return *this;
}

NftRule& NftRule::reject_port_unreachable() {
  // icmpx: ICMP or ICMPv6 by the packet's family; a local TCP connect() gets ECONNREFUSED.
  nftnl_expr* e = make("reject");
  nftnl_expr_set_u32(e, NFTNL_EXPR_REJECT_TYPE, NFT_REJECT_ICMPX_UNREACH);
  nftnl_expr_set_u8(e, NFTNL_EXPR_REJECT_CODE, NFT_REJECT_ICMPX_PORT_UNREACH);
  add(e);
  need("nft_reject_inet");
  return *this;
}

NftRule& NftRule::tcp_not_syn() {
  constexpr std::uint32_t kTcpFlagsOffset = 13;
  constexpr std::uint8_t kSyn = 0x02, kAck = 0x10;
  nftnl_expr* e = make("payload");
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, kTcpFlagsOffset);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, 1);
  nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, kReg);
  add(e);
  nftnl_expr* b = make("bitwise");
  const std::uint8_t mask = kSyn | kAck, zero = 0;
  nftnl_expr_set_u32(b, NFTNL_EXPR_BITWISE_SREG, kReg);
  nftnl_expr_set_u32(b, NFTNL_EXPR_BITWISE_DREG, kReg);
  nftnl_expr_set_u32(b, NFTNL_EXPR_BITWISE_LEN, 1);
  nftnl_expr_set(b, NFTNL_EXPR_BITWISE_MASK, &mask, 1);
  nftnl_expr_set(b, NFTNL_EXPR_BITWISE_XOR, &zero, 1);
  add(b);
  cmp(NFT_CMP_NEQ, &kSyn, 1);
  return *this;
}

void NftRule::load_immediate(const void* data, std::uint32_t len) {
  nftnl_expr* imm = make("immediate");
  nftnl_expr_set_u32(imm, NFTNL_EXPR_IMM_DREG, kReg);
  nftnl_expr_set(imm, NFTNL_EXPR_IMM_DATA, data, len);
  add(imm);
}

NftRule& NftRule::set_mark(std::uint32_t mark) {
  load_immediate(&mark, sizeof mark);
  nftnl_expr* e = make("meta");
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, NFT_META_MARK);
  nftnl_expr_set_u32(e, NFTNL_EXPR_META_SREG, kReg);
  add(e);
  return *this;
}

NftRule& NftRule::ct_mark_neq(std::uint32_t mark) {
  nftnl_expr* e = make("ct");
  nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CT_DREG, kReg);
  add(e);
  cmp(NFT_CMP_NEQ, &mark, sizeof mark);
  need("nft_ct");
  return *this;
}

NftRule& NftRule::set_ct_mark(std::uint32_t mark) {
  load_immediate(&mark, sizeof mark);
  nftnl_expr* e = make("ct");
  nftnl_expr_set_u32(e, NFTNL_EXPR_CT_KEY, NFT_CT_MARK);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CT_SREG, kReg);
  add(e);
  need("nft_ct");
  return *this;
}

NftRule& NftRule::tproxy_to_port(std::uint16_t port) {
  const std::uint16_t be = htons(port);
  nftnl_expr* imm = make("immediate");
  nftnl_expr_set_u32(imm, NFTNL_EXPR_IMM_DREG, kReg);
  nftnl_expr_set(imm, NFTNL_EXPR_IMM_DATA, &be, sizeof be);
  add(imm);
  nftnl_expr* e = make("tproxy");
  // No address: the packet keeps its destination and the family is the packet's own.
  nftnl_expr_set_u32(e, NFTNL_EXPR_TPROXY_FAMILY, NFPROTO_UNSPEC);
  nftnl_expr_set_u32(e, NFTNL_EXPR_TPROXY_REG_PORT, kReg);
  add(e);
  need("nft_tproxy");
  return *this;
}

NftRule& NftRule::oif_neq(std::uint32_t ifindex) {
  add(meta_load(NFT_META_OIF));
  cmp(NFT_CMP_NEQ, &ifindex, sizeof ifindex);
  return *this;
}

NftRule& NftRule::counter() {
  add(make("counter"));
  return *this;
}

NftRule& NftRule::accept() {
  nftnl_expr* e = make("immediate");
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, NF_ACCEPT);
  add(e);
  return *this;
}

}  // namespace splitd::firewall
