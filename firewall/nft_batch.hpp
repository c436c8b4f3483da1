#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "common/expected.hpp"
#include "firewall/firewall.hpp"
#include "firewall/nft_rule.hpp"

namespace splitd::firewall {

class NetlinkSocket;

// One nftables transaction on one `inet` table, built with libnftnl and sent as a single
// nfnetlink batch (BEGIN … END): the kernel applies all of it or nothing. Every message
// carries NLM_F_ACK and a label naming its object ("rule 'intercept TCP' in chain
// output"), so a refused message is reported by name, the way nft keeps a seq → command
// map. Value type, not thread-safe.
class NftBatch {
 public:
  explicit NftBatch(std::string table);

  // `add table` (without a comment it does not touch an existing table's comment).
  void add_table(std::string_view comment = {});
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
  Expected<void, FirewallError> commit(NetlinkSocket& sock);

 private:
  struct Entry {
    std::string label;
    std::string needs;  // kernel features the object needs (for "the kernel lacks …")
  };
  template <typename Build>
  void append(std::string label, std::string needs, Build&& build);

  std::string table_;
  std::vector<std::uint8_t> body_;  // the messages, sequence numbers patched by finish()
  std::vector<std::size_t> offsets_;
  std::vector<Entry> entries_;  // parallel to offsets_
  std::uint32_t begin_seq_ = 0;
  std::uint32_t next_set_id_ = 1;
};

// Whether `table inet TABLE` exists (NFT_MSG_GETTABLE).
Expected<bool, FirewallError> nft_table_exists(NetlinkSocket& sock, const std::string& table);

}  // namespace splitd::firewall
