#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "common/expected.hpp"
#include "firewall/firewall.hpp"
#include "firewall/nft_rule.hpp"

struct nlmsghdr;

namespace splitd::netlink {
class Socket;
}

namespace splitd::firewall {

// The nft name of an NFPROTO_* family ("ip", "ip6", "inet", ...; the number otherwise).
std::string nft_family_name(std::uint8_t family);

// One nftables transaction on one table (splitd's own `inet` table, or another program's
// table of any family), built with libnftnl and sent as a single nfnetlink batch
// (BEGIN … END): the kernel applies all of it or nothing. Every message carries NLM_F_ACK
// and a label naming its object ("rule 'intercept TCP' in chain output"), so a refused
// message is reported by name, the way nft keeps a seq → command map. Value type, not
// thread-safe.
class NftBatch {
 public:
  // On `table inet TABLE`; labels name chains alone ("in chain output").
  explicit NftBatch(std::string table);
  // On `table FAMILY TABLE` (NFPROTO_IPV4, NFPROTO_IPV6, ...); labels name the chain with
  // its family and table ("in chain ip wg-quick-wg0 preraw"), as it is not splitd's.
  NftBatch(std::uint8_t family, std::string table);

  // `add table` (without a comment it does not touch an existing table's comment).
  // `flags`: NFT_TABLE_F_* (0: the attribute is not sent, an existing table keeps its own).
  void add_table(std::string_view comment = {}, std::uint32_t flags = 0);
  // `delete table`; fails inside the kernel when the table does not exist, so precede it
  // with add_table() for "delete if present".
  void delete_table();
  // A named interval set of ipv4_addr or ipv6_addr holding the `family` blocks of `cidrs`.
  void add_interval_set(const std::string& name, IpAddress::Family family,
                        const std::vector<Cidr>& cidrs);
  // A base chain: `type TYPE hook HOOK priority PRIORITY; policy accept`.
  void add_chain(const std::string& name, const std::string& type, std::uint32_t hooknum,
                 std::int32_t priority);
  // Appends `rule` to `chain`, preceded by the anonymous sets it uses.
  void add_rule(const std::string& chain, NftRule rule);
  // Inserts `rule` at the head of `chain` (`nft insert rule`). The message asks for an
  // echo of the new rule, so after a successful commit() inserted_handle(INDEX) is its
  // handle, INDEX being the value returned here.
  std::size_t insert_rule(const std::string& chain, NftRule rule);
  // Deletes the rule with `handle` from `chain` (`nft delete rule ... handle H`); `what`
  // describes it in the label. Fails inside the kernel (ENOENT) when it is gone.
  void delete_rule(const std::string& chain, std::uint64_t handle, std::string_view what);
  // The handle the kernel gave the rule of insert_rule() call `index`, once committed.
  std::optional<std::uint64_t> inserted_handle(std::size_t index) const;

  // Messages between BEGIN and END.
  std::size_t size() const { return entries_.size(); }

  // The datagram: BEGIN with `begin_seq`, the messages with begin_seq+1 …, END. Also fixes
  // the sequence numbers that label() and describe_failure() look up.
  std::vector<std::uint8_t> finish(std::uint32_t begin_seq);
  std::uint32_t begin_seq() const { return begin_seq_; }
  std::uint32_t end_seq() const {
    return begin_seq_ + static_cast<std::uint32_t>(entries_.size()) + 1;
  }

  // The label of the message with sequence number `seq` ("nftables transaction" for BEGIN
  // and END, "" for a number outside the batch).
  std::string label(std::uint32_t seq) const;
  // The error for message `seq` refused with `error` (errno): names the object, the
  // reason and what to do.
  FirewallError describe_failure(std::uint32_t seq, int error, std::string_view ext_message) const;

  // Sends the batch on `sock` and reads every ACK.
  Expected<void, FirewallError> commit(netlink::Socket& sock);
  // The errno of the message that made the last commit() fail (ENOENT: an object it
  // refers to is gone); 0 when it succeeded or failed for another reason.
  int failure_errno() const { return failure_errno_; }

 private:
  struct Entry {
    std::string label;
    std::string needs;  // kernel features the object needs (for "the kernel lacks …")
    bool echo = false;  // NLM_F_ECHO: the kernel sends the new object back (its handle)
    std::optional<std::uint64_t> handle;
  };
  template <typename Build>
  void append(std::string label, std::string needs, Build&& build);
  std::size_t put_rule(const std::string& chain, NftRule rule, bool at_head);
  std::string chain_label(const std::string& chain) const;
  // Records the handle of an echoed rule; false if the message is malformed.
  bool take_echo(const nlmsghdr* nlh);

  std::uint8_t family_;
  bool qualified_labels_ = false;
  std::string table_;
  std::vector<std::uint8_t> body_;  // the messages, sequence numbers patched by finish()
  std::vector<std::size_t> offsets_;
  std::vector<Entry> entries_;  // parallel to offsets_
  std::uint32_t begin_seq_ = 0;
  std::uint32_t next_set_id_ = 1;
  int failure_errno_ = 0;
};

// Whether `table inet TABLE` exists (NFT_MSG_GETTABLE).
Expected<bool, FirewallError> nft_table_exists(netlink::Socket& sock, const std::string& table);

// A chain as the kernel lists it.
struct NftChainInfo {
  std::uint8_t family = 0;  // NFPROTO_*
  std::string table;
  std::string name;
  bool base = false;  // hooked into the stack (a base chain), not a jump target
  std::uint32_t hooknum = 0;
  std::int32_t priority = 0;
};

// Every chain of `family` (NFPROTO_UNSPEC: of every family), in the kernel's order.
// A dump interrupted by a concurrent change is an error mentioning "interrupted".
Expected<std::vector<NftChainInfo>, FirewallError> nft_list_chains(netlink::Socket& sock,
                                                                   std::uint8_t family);

// A rule as the kernel lists it: what splitd needs to recognise its own rules and other
// programs' rules without interpreting the expressions.
struct NftRuleInfo {
  std::uint64_t handle = 0;
  std::string comment;  // userdata comment (`comment "…"` of nft; iptables-nft reads it too)
  // Texts of xt `comment` matches (`-m comment --comment "…"`; iptables-nft 1.8 stores
  // iptables comments this way).
  std::vector<std::string> match_comments;
  std::vector<std::string> expressions;  // expression names in order: "meta", "cmp", ...

  // Whether the userdata comment or a match comment starts with / contains `text`.
  bool comment_starts_with(std::string_view text) const;
  bool comment_contains(std::string_view text) const;
};

// The rules of chain `chain` of `table FAMILY TABLE`, in order (the head first). A table
// or chain that does not exist gives an empty list.
Expected<std::vector<NftRuleInfo>, FirewallError> nft_list_rules(netlink::Socket& sock,
                                                                 std::uint8_t family,
                                                                 const std::string& table,
                                                                 const std::string& chain);

}  // namespace splitd::firewall
