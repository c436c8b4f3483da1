#include "firewall/nft_batch.hpp"

#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "firewall/ack_tracker.hpp"
#include "firewall/interval_set.hpp"
#include "firewall/netlink_errors.hpp"
#include "netlink/message.hpp"
#include "netlink/socket.hpp"

namespace splitd::firewall {
namespace {

// No single message comes near this: rules are < 1 KiB and set elements are sent in
// chunks of kElementsPerMessage (< 64 bytes each).
constexpr std::size_t kMaxMessage = 64 * 1024;
constexpr std::size_t kElementsPerMessage = 256;

constexpr std::uint32_t kTypeIpv4Addr = 7;  // nft datatype ids
constexpr std::uint32_t kTypeIpv6Addr = 8;
constexpr std::uint32_t kByteorderBigEndian = 2;

struct TableDeleter {
  void operator()(nftnl_table* t) const noexcept { nftnl_table_free(t); }
};
struct ChainDeleter {
  void operator()(nftnl_chain* c) const noexcept { nftnl_chain_free(c); }
};
struct SetDeleter {
  void operator()(nftnl_set* s) const noexcept { nftnl_set_free(s); }
};
struct ExprIterDeleter {
  void operator()(nftnl_expr_iter* it) const noexcept { nftnl_expr_iter_destroy(it); }
};
struct UdataDeleter {
  void operator()(nftnl_udata_buf* b) const noexcept { nftnl_udata_buf_free(b); }
};

template <typename T, typename D>
std::unique_ptr<T, D> checked(T* p) {
  if (p == nullptr) throw std::bad_alloc();
  return std::unique_ptr<T, D>(p);
}

using Udata = std::unique_ptr<nftnl_udata_buf, UdataDeleter>;
Udata new_udata() {
  return checked<nftnl_udata_buf, UdataDeleter>(nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN));
}

using SetPtr = std::unique_ptr<nftnl_set, SetDeleter>;

SetPtr new_set(const std::string& table, const std::string& name, std::uint32_t id) {
  auto s = checked<nftnl_set, SetDeleter>(nftnl_set_alloc());
  nftnl_set_set_str(s.get(), NFTNL_SET_TABLE, table.c_str());
  nftnl_set_set_str(s.get(), NFTNL_SET_NAME, name.c_str());
  nftnl_set_set_u32(s.get(), NFTNL_SET_ID, id);
  return s;
}

void set_key_byteorder(nftnl_set* s, std::uint32_t byteorder) {
  Udata ud = new_udata();
  nftnl_udata_put_u32(ud.get(), NFTNL_UDATA_SET_KEYBYTEORDER, byteorder);
  nftnl_set_set_data(s, NFTNL_SET_USERDATA, nftnl_udata_buf_data(ud.get()),
                     nftnl_udata_buf_len(ud.get()));
}

void add_element(nftnl_set* s, const void* key, std::uint32_t len, bool end, bool open) {
  nftnl_set_elem* e = nftnl_set_elem_alloc();
  if (e == nullptr) throw std::bad_alloc();
  nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, key, len);
  if (end) nftnl_set_elem_set_u32(e, NFTNL_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
  if (open) {
    // Tells nft that the range runs to the end of the address space (it lists
    // `ff00::/8`, not a range to nowhere).
    Udata ud = new_udata();
    nftnl_udata_put_u32(ud.get(), NFTNL_UDATA_SET_ELEM_FLAGS, NFTNL_SET_ELEM_F_INTERVAL_OPEN);
    nftnl_set_elem_set(e, NFTNL_SET_ELEM_USERDATA, nftnl_udata_buf_data(ud.get()),
                       nftnl_udata_buf_len(ud.get()));
  }
  nftnl_set_elem_add(s, e);
}

std::string errno_text(int error) { return std::strerror(error); }

}  // namespace

std::string nft_family_name(std::uint8_t family) {
  switch (family) {
    case NFPROTO_INET:
      return "inet";
    case NFPROTO_IPV4:
      return "ip";
    case NFPROTO_IPV6:
      return "ip6";
    case NFPROTO_ARP:
      return "arp";
    case NFPROTO_BRIDGE:
      return "bridge";
    case NFPROTO_NETDEV:
      return "netdev";
    default:
      return "family " + std::to_string(family);
  }
}

NftBatch::NftBatch(std::string table) : family_(NFPROTO_INET), table_(std::move(table)) {}

NftBatch::NftBatch(std::uint8_t family, std::string table)
    : family_(family), qualified_labels_(true), table_(std::move(table)) {}

std::string NftBatch::chain_label(const std::string& chain) const {
  if (!qualified_labels_) return chain;
  return nft_family_name(family_) + " " + table_ + " " + chain;
}

template <typename Build>
void NftBatch::append(std::string label, std::string needs, Build&& build) {
  auto scratch = std::make_unique_for_overwrite<std::uint8_t[]>(kMaxMessage);
  nlmsghdr* nlh = build(reinterpret_cast<char*>(scratch.get()));
  if (nlh->nlmsg_len > kMaxMessage) std::abort();  // already overran: a programming error
  offsets_.push_back(body_.size());
  body_.insert(body_.end(), scratch.get(), scratch.get() + nlh->nlmsg_len);
  body_.resize(offsets_.back() + NLMSG_ALIGN(nlh->nlmsg_len), 0);
  Entry entry;
  entry.label = std::move(label);
  entry.needs = std::move(needs);
  entries_.push_back(std::move(entry));
}

void NftBatch::add_table(std::string_view comment, std::uint32_t flags) {
  auto t = checked<nftnl_table, TableDeleter>(nftnl_table_alloc());
  nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table_.c_str());
  if (flags != 0) nftnl_table_set_u32(t.get(), NFTNL_TABLE_FLAGS, flags);
  if (!comment.empty()) {
    Udata ud = new_udata();
    nftnl_udata_put_strz(ud.get(), NFTNL_UDATA_TABLE_COMMENT, std::string(comment).c_str());
    nftnl_table_set_data(t.get(), NFTNL_TABLE_USERDATA, nftnl_udata_buf_data(ud.get()),
                         nftnl_udata_buf_len(ud.get()));
  }
  append("table " + nft_family_name(family_) + " " + table_,
         family_ == NFPROTO_INET ? "nf_tables with the inet family (CONFIG_NF_TABLES_INET)"
                                 : "nf_tables",
         [&](char* buf) {
           nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWTABLE, family_,
                                                 NLM_F_CREATE | NLM_F_ACK, 0);
           nftnl_table_nlmsg_build_payload(nlh, t.get());
           return nlh;
         });
}

void NftBatch::delete_table() {
  auto t = checked<nftnl_table, TableDeleter>(nftnl_table_alloc());
  nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table_.c_str());
  append("deletion of table " + nft_family_name(family_) + " " + table_, "", [&](char* buf) {
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_DELTABLE, family_, NLM_F_ACK, 0);
    nftnl_table_nlmsg_build_payload(nlh, t.get());
    return nlh;
  });
}

void NftBatch::add_interval_set(const std::string& name, IpAddress::Family family,
                                const std::vector<Cidr>& cidrs) {
  const bool v4 = family == IpAddress::Family::kV4;
  const std::uint32_t id = next_set_id_++;
  SetPtr s = new_set(table_, name, id);
  nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_INTERVAL);
  nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, v4 ? kTypeIpv4Addr : kTypeIpv6Addr);
  nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, v4 ? 4 : 16);
  set_key_byteorder(s.get(), kByteorderBigEndian);
  append("set " + name, "nf_tables interval sets", [&](char* buf) {
    nlmsghdr* nlh =
        nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWSET, family_, NLM_F_CREATE | NLM_F_ACK, 0);
    nftnl_set_nlmsg_build_payload(nlh, s.get());
    return nlh;
  });

  const auto elements = interval_elements(cidrs, family);
  for (std::size_t at = 0; at < elements.size(); at += kElementsPerMessage) {
    SetPtr chunk = new_set(table_, name, id);
    const std::size_t end = std::min(elements.size(), at + kElementsPerMessage);
    for (std::size_t i = at; i < end; ++i) {
      const auto& e = elements[i];
      add_element(chunk.get(), e.key.data(), e.key_len, e.end, e.open);
    }
    append("elements of set " + name, "", [&](char* buf) {
      nlmsghdr* nlh =
          nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWSETELEM, family_, NLM_F_CREATE | NLM_F_ACK, 0);
      nftnl_set_elems_nlmsg_build_payload(nlh, chunk.get());
      return nlh;
    });
  }
}

void NftBatch::add_chain(const std::string& name, const std::string& type, std::uint32_t hooknum,
                         std::int32_t priority) {
  auto c = checked<nftnl_chain, ChainDeleter>(nftnl_chain_alloc());
  nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TABLE, table_.c_str());
  nftnl_chain_set_str(c.get(), NFTNL_CHAIN_NAME, name.c_str());
  nftnl_chain_set_str(c.get(), NFTNL_CHAIN_TYPE, type.c_str());
  nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_HOOKNUM, hooknum);
  nftnl_chain_set_s32(c.get(), NFTNL_CHAIN_PRIO, priority);
  nftnl_chain_set_u32(c.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
  append("chain " + chain_label(name), "nf_tables chains of type " + type, [&](char* buf) {
    nlmsghdr* nlh =
        nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWCHAIN, family_, NLM_F_CREATE | NLM_F_ACK, 0);
    nftnl_chain_nlmsg_build_payload(nlh, c.get());
    return nlh;
  });
}

void NftBatch::add_rule(const std::string& chain, NftRule rule) {
  put_rule(chain, std::move(rule), false);
}

std::size_t NftBatch::insert_rule(const std::string& chain, NftRule rule) {
  return put_rule(chain, std::move(rule), true);
}

void NftBatch::delete_rule(const std::string& chain, std::uint64_t handle, std::string_view what) {
  auto r = checked<nftnl_rule, NftnlRuleDeleter>(nftnl_rule_alloc());
  nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, table_.c_str());
  nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, chain.c_str());
  nftnl_rule_set_u64(r.get(), NFTNL_RULE_HANDLE, handle);
  append("deletion of rule handle " + std::to_string(handle) +
             (what.empty() ? std::string() : " (" + std::string(what) + ")") + " in chain " +
             chain_label(chain),
         "", [&](char* buf) {
           nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_DELRULE, family_, NLM_F_ACK, 0);
           nftnl_rule_nlmsg_build_payload(nlh, r.get());
           return nlh;
         });
}

std::optional<std::uint64_t> NftBatch::inserted_handle(std::size_t index) const {
  if (index >= entries_.size()) return std::nullopt;
  return entries_[index].handle;
}

bool NftBatch::take_echo(const nlmsghdr* nlh) {
  const std::uint32_t seq = nlh->nlmsg_seq;
  if (seq <= begin_seq_ || seq >= end_seq()) return true;  // not one of ours
  Entry& entry = entries_[seq - begin_seq_ - 1];
  if (!entry.echo) return true;
  auto r = checked<nftnl_rule, NftnlRuleDeleter>(nftnl_rule_alloc());
  if (nftnl_rule_nlmsg_parse(nlh, r.get()) < 0 || !nftnl_rule_is_set(r.get(), NFTNL_RULE_HANDLE))
    return false;
  entry.handle = nftnl_rule_get_u64(r.get(), NFTNL_RULE_HANDLE);
  return true;
}

std::size_t NftBatch::put_rule(const std::string& chain, NftRule rule, bool at_head) {
  const std::string label = "rule '" + rule.comment() + "' in chain " + chain_label(chain);
  for (auto& anon : rule.anonymous_sets()) {
    const std::uint32_t id = next_set_id_++;
    SetPtr s = new_set(table_, "__set%d", id);  // the kernel picks the number
    nftnl_set_set_u32(s.get(), NFTNL_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_TYPE, anon.key_type);
    nftnl_set_set_u32(s.get(), NFTNL_SET_KEY_LEN, anon.key_len);
    nftnl_set_set_u32(s.get(), NFTNL_SET_DESC_SIZE, static_cast<std::uint32_t>(anon.keys.size()));
    set_key_byteorder(s.get(), anon.byteorder);
    append("anonymous set of " + label, "", [&](char* buf) {
      nlmsghdr* nlh =
          nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWSET, family_, NLM_F_CREATE | NLM_F_ACK, 0);
      nftnl_set_nlmsg_build_payload(nlh, s.get());
      return nlh;
    });
    SetPtr elems = new_set(table_, "__set%d", id);
    for (const auto& k : anon.keys) {
      add_element(elems.get(), k.data(), static_cast<std::uint32_t>(k.size()), false, false);
    }
    append("elements of the anonymous set of " + label, "", [&](char* buf) {
      nlmsghdr* nlh =
          nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWSETELEM, family_, NLM_F_CREATE | NLM_F_ACK, 0);
      nftnl_set_elems_nlmsg_build_payload(nlh, elems.get());
      return nlh;
    });
    nftnl_expr_set_u32(anon.lookup, NFTNL_EXPR_LOOKUP_SET_ID, id);
  }
  nftnl_rule* r = rule.get();
  nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table_.c_str());
  nftnl_rule_set_str(r, NFTNL_RULE_CHAIN, chain.c_str());
  // Without NLM_F_APPEND (and without a position) the kernel puts the rule first.
  const std::uint16_t flags = at_head ? NLM_F_CREATE | NLM_F_ACK | NLM_F_ECHO
                                      : NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK;
  append(label, rule.needs(), [&](char* buf) {
    nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_NEWRULE, family_, flags, 0);
    nftnl_rule_nlmsg_build_payload(nlh, r);
    return nlh;
  });
  entries_.back().echo = at_head;
  return entries_.size() - 1;
}

std::vector<std::uint8_t> NftBatch::finish(std::uint32_t begin_seq) {
  begin_seq_ = begin_seq;
  for (std::size_t i = 0; i < offsets_.size(); ++i) {
    const std::uint32_t seq = begin_seq + 1 + static_cast<std::uint32_t>(i);
    std::memcpy(body_.data() + offsets_[i] + offsetof(nlmsghdr, nlmsg_seq), &seq, sizeof seq);
  }
  alignas(nlmsghdr) char frame[256];
  std::vector<std::uint8_t> out;
  out.reserve(body_.size() + 2 * NLMSG_ALIGN(NLMSG_LENGTH(sizeof(nfgenmsg))));
  const nlmsghdr* begin = nftnl_batch_begin(frame, begin_seq);
  out.insert(out.end(), reinterpret_cast<const std::uint8_t*>(begin),
             reinterpret_cast<const std::uint8_t*>(begin) + NLMSG_ALIGN(begin->nlmsg_len));
  out.insert(out.end(), body_.begin(), body_.end());
  const nlmsghdr* end = nftnl_batch_end(frame, end_seq());
  out.insert(out.end(), reinterpret_cast<const std::uint8_t*>(end),
             reinterpret_cast<const std::uint8_t*>(end) + NLMSG_ALIGN(end->nlmsg_len));
  return out;
}

std::string NftBatch::label(std::uint32_t seq) const {
  if (seq == begin_seq_ || seq == end_seq()) return "nftables transaction";
  if (seq < begin_seq_ || seq > end_seq()) return "";
  return entries_[seq - begin_seq_ - 1].label;
}

FirewallError NftBatch::describe_failure(std::uint32_t seq, int error,
                                         std::string_view ext_message) const {
  std::string label_text = label(seq);
  if (label_text.empty()) label_text = "nftables message " + std::to_string(seq);
  std::string needs;
  if (seq > begin_seq_ && seq < end_seq()) needs = entries_[seq - begin_seq_ - 1].needs;

  FirewallError e;
  e.message = label_text + ": " + errno_text(error);
  if (!ext_message.empty()) e.message += " (" + std::string(ext_message) + ")";
  switch (error) {
    case EPERM:
    case EACCES:
      e.code = FirewallErrorCode::kPermission;
      e.message += "; splitd needs CAP_NET_ADMIN in this network namespace";
      break;
    case ENOENT:
    case EOPNOTSUPP:
    case EAFNOSUPPORT:
    case EPROTONOSUPPORT:
      // nf_tables answers ENOENT for an expression or chain type it cannot load.
      e.code = FirewallErrorCode::kUnsupported;
      if (!needs.empty()) {
        e.message += "; the kernel may lack " + needs +
                     " (load the module with modprobe or enable it in the kernel config)";
      }
      break;
    default:
      e.code = FirewallErrorCode::kKernel;
      break;
  }
  return e;
}

Expected<void, FirewallError> NftBatch::commit(netlink::Socket& sock) {
  const auto messages = static_cast<std::uint32_t>(entries_.size());
  const std::vector<std::uint8_t> datagram = finish(sock.reserve_seqs(messages + 2));
  // One queued ACK costs about 1 KiB of receive buffer; all are queued before send()
  // returns, so the buffer must hold them all.
  sock.ensure_receive_buffer(static_cast<int>(messages) * 1024 + 64 * 1024);
  if (auto r = sock.send(datagram); !r) return unexpected(netlink_error(r.error()));

  failure_errno_ = 0;
  const bool echoes =
      std::any_of(entries_.begin(), entries_.end(), [](const Entry& e) { return e.echo; });
  AckTracker acks(begin_seq_, end_seq(), sock.portid());
  while (!acks.done()) {
    // After an error only a short wait: the rest of the ACKs are already queued.
    auto data = sock.receive(acks.failure() ? std::chrono::milliseconds(200)
                                            : netlink::Socket::kReplyTimeout);
    if (!data) {
      if (acks.failure()) break;
      return unexpected(netlink_error(data.error()));
    }
    if (data->empty()) {
      if (acks.failure()) break;
      return unexpected(FirewallError{FirewallErrorCode::kNetlink,
                                      "nftables transaction: no acknowledgement for " +
                                          std::to_string(acks.missing()) + " of " +
                                          std::to_string(messages) + " messages"});
    }
    if (echoes) {
      // The echoed rules come before the ACKs: the kernel sends its notifications at
      // commit and delivers the batch's ACKs after that.
      // A malformed datagram is reported by acks.feed() below.
      netlink::MessageReader reader(*data);
      while (const nlmsghdr* nlh = reader.next()) {
        if (nlh->nlmsg_pid != sock.portid()) continue;
        if (nlh->nlmsg_type != ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE)) continue;
        if (!take_echo(nlh)) {
          return unexpected(FirewallError{FirewallErrorCode::kNetlink,
                                          "nfnetlink: malformed reply: echoed rule"});
        }
      }
    }
    if (auto r = acks.feed(*data); !r) return unexpected(r.error());
  }
  if (const auto& f = acks.failure()) {
    failure_errno_ = f->error;
    return unexpected(describe_failure(f->seq, f->error, f->ext_message));
  }
  return {};
}

Expected<bool, FirewallError> nft_table_exists(netlink::Socket& sock, const std::string& table) {
  auto t = checked<nftnl_table, TableDeleter>(nftnl_table_alloc());
  nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, table.c_str());
  alignas(nlmsghdr) char buf[512];
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETTABLE, NFPROTO_INET, NLM_F_ACK, 0);
  nftnl_table_nlmsg_build_payload(nlh, t.get());
  bool seen = false;
  auto ack = sock.dump(nlh, [&](const nlmsghdr& reply) {
    const nlmsghdr* m = &reply;
    if ((m->nlmsg_type & 0xff) == NFT_MSG_NEWTABLE) seen = true;
  });
  if (!ack) return unexpected(netlink_error(ack.error()));
  const int error = ack_errno(*ack);
  if (error == ENOENT) return false;
  if (error != 0) {
    const bool perm = error == EPERM || error == EACCES;
    return unexpected(
        FirewallError{perm ? FirewallErrorCode::kPermission : FirewallErrorCode::kKernel,
                      "query of table inet " + table + ": " + std::strerror(error) +
                          (perm ? "; splitd needs CAP_NET_ADMIN in this network namespace" : "")});
  }
  return seen;
}

namespace {

FirewallError dump_failure(const std::string& what, int error) {
  const bool perm = error == EPERM || error == EACCES;
  return FirewallError{perm ? FirewallErrorCode::kPermission : FirewallErrorCode::kKernel,
                       what + ": " + std::strerror(error) +
                           (error == EINTR ? " (interrupted by a concurrent change)" : "") +
                           (perm ? "; splitd needs CAP_NET_ADMIN in this network namespace" : "")};
}

bool is_nft_message(const nlmsghdr* m, std::uint8_t type) {
  return (m->nlmsg_type >> 8) == NFNL_SUBSYS_NFTABLES && (m->nlmsg_type & 0xff) == type;
}

// The NUL-terminated text of `data`, or nothing when it has no NUL within `len`.
std::optional<std::string> bounded_string(const void* data, std::size_t len) {
  if (data == nullptr) return std::nullopt;
  const char* p = static_cast<const char*>(data);
  const void* nul = std::memchr(p, '\0', len);
  if (nul == nullptr) return std::nullopt;
  return std::string(p, static_cast<const char*>(nul));
}

// What an nftnl_udata_parse callback returns to go on (libmnl's MNL_CB_OK, whose
// convention libnftnl follows; any value >= 0 continues).
constexpr int kUdataContinue = 1;

// The comment in a rule's userdata (NFTNL_UDATA_RULE_COMMENT), if any.
std::string userdata_comment(const nftnl_rule* r) {
  if (!nftnl_rule_is_set(r, NFTNL_RULE_USERDATA)) return {};
  std::uint32_t len = 0;
  const void* data = nftnl_rule_get_data(r, NFTNL_RULE_USERDATA, &len);
  if (data == nullptr || len == 0) return {};
  std::string comment;
  nftnl_udata_parse(
      data, len,
      [](const nftnl_udata* attr, void* out) -> int {
        if (nftnl_udata_type(attr) != NFTNL_UDATA_RULE_COMMENT) return kUdataContinue;
        if (auto text = bounded_string(nftnl_udata_get(attr), nftnl_udata_len(attr)))
          *static_cast<std::string*>(out) = std::move(*text);
        return kUdataContinue;
      },
      &comment);
  return comment;
}

}  // namespace

bool NftRuleInfo::comment_starts_with(std::string_view text) const {
  if (std::string_view(comment).starts_with(text)) return true;
  return std::any_of(match_comments.begin(), match_comments.end(),
                     [&](const std::string& c) { return std::string_view(c).starts_with(text); });
}

bool NftRuleInfo::comment_contains(std::string_view text) const {
  if (comment.find(text) != std::string::npos) return true;
  return std::any_of(match_comments.begin(), match_comments.end(),
                     [&](const std::string& c) { return c.find(text) != std::string::npos; });
}

Expected<std::vector<NftChainInfo>, FirewallError> nft_list_chains(netlink::Socket& sock,
                                                                   std::uint8_t family) {
  alignas(nlmsghdr) char buf[512];
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETCHAIN, family, NLM_F_DUMP, 0);
  std::vector<NftChainInfo> out;
  bool malformed = false;
  auto ack = sock.dump(nlh, [&](const nlmsghdr& reply) {
    const nlmsghdr* m = &reply;
    if (!is_nft_message(m, NFT_MSG_NEWCHAIN)) return;
    auto c = checked<nftnl_chain, ChainDeleter>(nftnl_chain_alloc());
    if (nftnl_chain_nlmsg_parse(m, c.get()) < 0 ||
        !nftnl_chain_is_set(c.get(), NFTNL_CHAIN_TABLE) ||
        !nftnl_chain_is_set(c.get(), NFTNL_CHAIN_NAME) ||
        !nftnl_chain_is_set(c.get(), NFTNL_CHAIN_FAMILY)) {
      malformed = true;
      return;
    }
    NftChainInfo info;
    info.family = static_cast<std::uint8_t>(nftnl_chain_get_u32(c.get(), NFTNL_CHAIN_FAMILY));
    info.table = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_TABLE);
    info.name = nftnl_chain_get_str(c.get(), NFTNL_CHAIN_NAME);
    info.base = nftnl_chain_is_set(c.get(), NFTNL_CHAIN_HOOKNUM);
    if (info.base) {
      info.hooknum = nftnl_chain_get_u32(c.get(), NFTNL_CHAIN_HOOKNUM);
      if (nftnl_chain_is_set(c.get(), NFTNL_CHAIN_PRIO))
        info.priority = nftnl_chain_get_s32(c.get(), NFTNL_CHAIN_PRIO);
    }
    out.push_back(std::move(info));
  });
  const std::string what = "listing of the " + nft_family_name(family) + " chains";
  if (!ack) return unexpected(netlink_error(ack.error()));
  if (const int error = ack_errno(*ack); error != 0) return unexpected(dump_failure(what, error));
  if (malformed) {
    return unexpected(
        FirewallError{FirewallErrorCode::kNetlink, what + ": malformed chain in the reply"});
  }
  return out;
}

Expected<std::vector<NftRuleInfo>, FirewallError> nft_list_rules(netlink::Socket& sock,
                                                                 std::uint8_t family,
                                                                 const std::string& table,
                                                                 const std::string& chain) {
  // The kernel filters the dump by table and chain.
  auto filter = checked<nftnl_rule, NftnlRuleDeleter>(nftnl_rule_alloc());
  nftnl_rule_set_str(filter.get(), NFTNL_RULE_TABLE, table.c_str());
  nftnl_rule_set_str(filter.get(), NFTNL_RULE_CHAIN, chain.c_str());
  alignas(nlmsghdr) char buf[1024];
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETRULE, family, NLM_F_DUMP, 0);
  nftnl_rule_nlmsg_build_payload(nlh, filter.get());
  std::vector<NftRuleInfo> out;
  bool malformed = false;
  auto ack = sock.dump(nlh, [&](const nlmsghdr& reply) {
    const nlmsghdr* m = &reply;
    if (!is_nft_message(m, NFT_MSG_NEWRULE)) return;
    auto r = checked<nftnl_rule, NftnlRuleDeleter>(nftnl_rule_alloc());
    if (nftnl_rule_nlmsg_parse(m, r.get()) < 0 || !nftnl_rule_is_set(r.get(), NFTNL_RULE_HANDLE) ||
        !nftnl_rule_is_set(r.get(), NFTNL_RULE_TABLE) ||
        !nftnl_rule_is_set(r.get(), NFTNL_RULE_CHAIN)) {
      malformed = true;
      return;
    }
    // Old kernels ignore the filter: check it here as well.
    if (table != nftnl_rule_get_str(r.get(), NFTNL_RULE_TABLE) ||
        chain != nftnl_rule_get_str(r.get(), NFTNL_RULE_CHAIN) ||
        nftnl_rule_get_u32(r.get(), NFTNL_RULE_FAMILY) != family) {
      return;
    }
    NftRuleInfo info;
    info.handle = nftnl_rule_get_u64(r.get(), NFTNL_RULE_HANDLE);
    info.comment = userdata_comment(r.get());
    auto it = checked<nftnl_expr_iter, ExprIterDeleter>(nftnl_expr_iter_create(r.get()));
    for (nftnl_expr* e = nftnl_expr_iter_next(it.get()); e != nullptr;
         e = nftnl_expr_iter_next(it.get())) {
      const char* name = nftnl_expr_get_str(e, NFTNL_EXPR_NAME);
      info.expressions.emplace_back(name != nullptr ? name : "?");
      if (name == nullptr || std::strcmp(name, "match") != 0) continue;
      const char* match = nftnl_expr_get_str(e, NFTNL_EXPR_MT_NAME);
      if (match == nullptr || std::strcmp(match, "comment") != 0) continue;
      // struct xt_comment_info { char comment[XT_MAX_COMMENT_LEN]; }
      std::uint32_t len = 0;
      const void* data = nftnl_expr_get(e, NFTNL_EXPR_MT_INFO, &len);
      if (auto text = bounded_string(data, len)) info.match_comments.push_back(std::move(*text));
    }
    out.push_back(std::move(info));
  });
  const std::string what =
      "listing of chain " + nft_family_name(family) + " " + table + " " + chain;
  if (!ack) return unexpected(netlink_error(ack.error()));
  const int error = ack_errno(*ack);
  if (error == ENOENT) return std::vector<NftRuleInfo>{};
  if (error != 0) return unexpected(dump_failure(what, error));
  if (malformed) {
    return unexpected(
        FirewallError{FirewallErrorCode::kNetlink, what + ": malformed rule in the reply"});
  }
  return out;
}

}  // namespace splitd::firewall
