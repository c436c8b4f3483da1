#include "firewall/vpn_coexistence.hpp"

#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <system_error>
#include <thread>
#include <tuple>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "firewall/netlink_errors.hpp"
#include "firewall/nft_batch.hpp"
#include "firewall/nft_rule.hpp"
#include "netlink/message.hpp"
#include "netlink/socket.hpp"

namespace splitd::firewall {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kIptablesTable = "raw";
constexpr std::string_view kIptablesChain = "PREROUTING";
// A listing or a transaction that raced with another program's change is retried this
// often before reconcile() gives up until the next event.
constexpr int kAttempts = 3;
// At most this many event datagrams are read before a reconcile, so a program that keeps
// changing its tables cannot starve the watcher.
constexpr int kMaxEventsPerWake = 256;
// Room for bursts of events (iptables-restore of a large ruleset) before ENOBUFS.
constexpr int kEventBuffer = 1 << 20;

using Key = std::tuple<std::uint8_t, std::string, std::string>;  // family, table, chain

Key key_of(const VpnCoexistence::Placement& p) { return {p.family, p.table, p.chain}; }

bool interrupted(const FirewallError& e) {
  return e.message.find("interrupted") != std::string::npos;
}

std::string who(VpnCoexistence::Form form) {
  return form == VpnCoexistence::Form::kWgQuickTable ? "wg-quick's" : "wg-quick's iptables";
}

// The command an operator runs when splitd cannot place its rule itself.
std::string manual_fix(const VpnCoexistence::Placement& p) {
  std::string fix = "`nft insert rule " + nft_family_name(p.family) + " " + p.table + " " +
                    p.chain + " iifname \"lo\" accept`";
  if (p.form == VpnCoexistence::Form::kIptablesNft) {
    const char* tool = p.family == NFPROTO_IPV6 ? "ip6tables" : "iptables";
    fix += std::string(" (or `") + tool + " -t raw -I PREROUTING -i lo -j ACCEPT`)";
  }
  return fix;
}

}  // namespace

std::string VpnCoexistence::Placement::describe() const {
  return "chain " + nft_family_name(family) + " " + table + " " + chain;
}

struct VpnCoexistence::Impl {
  Impl(netlink::Socket req, netlink::Socket ev) : requests(std::move(req)), events(std::move(ev)) {}

  // A chain that may need splitd's rule.
  struct Candidate {
    Form form;
    std::uint8_t family;
    std::string table;
    std::string chain;
  };

  Expected<std::vector<Candidate>, FirewallError> discover();
  // One pass; true when it raced with another program's change and should run again.
  // On the `last` pass a refusal for a missing object (ENOENT) is reported, not retried.
  Expected<bool, FirewallError> reconcile_once(Report& report, bool last);
  Expected<Report, FirewallError> reconcile();
  Expected<Report, FirewallError> remove_all();
  void warn_once(const Key& key, const std::string& message);
  void watch();

  mutable std::mutex mutex;
  netlink::Socket requests;             // guarded by mutex
  std::map<Key, Placement> tracked;   // guarded by mutex
  std::map<Key, std::string> warned;  // guarded by mutex: last warning per chain
  std::string last_error;             // guarded by mutex: last reconcile error (watcher)

  netlink::Socket events;  // the watcher thread's; start() and stop() only while it is not running
  Fd wake;               // eventfd: stop() wakes the watcher
  std::thread watcher;
  std::atomic<std::uint64_t> watcher_reconciles{0};
};

Expected<std::vector<VpnCoexistence::Impl::Candidate>, FirewallError>
VpnCoexistence::Impl::discover() {
  auto chains = nft_list_chains(requests, NFPROTO_UNSPEC);
  if (!chains) return unexpected(chains.error());
  std::vector<Candidate> out;
  for (auto& c : *chains) {
    if (c.family != NFPROTO_IPV4 && c.family != NFPROTO_IPV6) continue;
    // Only base chains on prerouting: a table of that name whose `preraw` is something
    // else is not wg-quick's, and splitd leaves it alone.
    if (!c.base || c.hooknum != NF_INET_PRE_ROUTING) continue;
    if (std::string_view(c.table).starts_with(kWgQuickTablePrefix) &&
        c.table.size() > kWgQuickTablePrefix.size() && c.name == kWgQuickChain) {
      out.push_back(
          Candidate{Form::kWgQuickTable, c.family, std::move(c.table), std::move(c.name)});
    } else if (c.table == kIptablesTable && c.name == kIptablesChain) {
      out.push_back(Candidate{Form::kIptablesNft, c.family, std::move(c.table), std::move(c.name)});
    }
  }
  return out;
}

void VpnCoexistence::Impl::warn_once(const Key& key, const std::string& message) {
  auto [it, inserted] = warned.try_emplace(key, message);
  if (!inserted && it->second == message) return;  // said already; the watcher retries quietly
  it->second = message;
  log::warn(message);
}

Expected<bool, FirewallError> VpnCoexistence::Impl::reconcile_once(Report& report, bool last) {
  auto candidates = discover();
  if (!candidates) {
    if (interrupted(candidates.error())) return true;
    return unexpected(candidates.error());
  }
  bool raced = false;
  std::set<Key> present;
  for (const Candidate& c : *candidates) {
    Placement where{c.form, c.family, c.table, c.chain, 0};
    const Key key = key_of(where);
    auto rules = nft_list_rules(requests, c.family, c.table, c.chain);
    if (!rules) {
      if (interrupted(rules.error())) {
        raced = true;
        present.insert(key);  // unknown: do not forget it yet
        continue;
      }
      const std::string msg = "VPN coexistence: cannot read " + where.describe() + ": " +
                              rules.error().message + "; splitd's proxied flows may be dropped";
      warn_once(key, msg);
      report.failures.push_back(msg);
      present.insert(key);
      continue;
    }

    std::vector<std::size_t> ours;
    std::optional<std::size_t> first_guarded;  // the first rule splitd's must precede
    for (std::size_t i = 0; i < rules->size(); ++i) {
      const NftRuleInfo& r = (*rules)[i];
      if (r.comment_starts_with(kCommentPrefix)) {
        ours.push_back(i);
      } else if (!first_guarded &&
                 (c.form == Form::kWgQuickTable || r.comment_contains(kWgQuickMarker))) {
        first_guarded = i;
      }
    }

    // iptables-nft's raw table belongs to every iptables user: splitd's rule stays there
    // only while wg-quick's rule does.
    if (c.form == Form::kIptablesNft && !first_guarded) {
      if (ours.empty()) continue;
      NftBatch batch(c.family, c.table);
      for (std::size_t i : ours) batch.delete_rule(c.chain, (*rules)[i].handle, "splitd's");
      if (auto r = batch.commit(requests); !r) {
        if (batch.failure_errno() == ENOENT && !last) {
          raced = true;
          continue;
        }
        warn_once(key, "VPN coexistence: cannot remove splitd's rule from " + where.describe() +
                           ": " + r.error().message);
        report.failures.push_back(r.error().message);
        present.insert(key);
        continue;
      }
      for (std::size_t i : ours) {
        where.handle = (*rules)[i].handle;
        log::info("VPN coexistence: removed splitd's rule (handle ", where.handle, ") from ",
                  where.describe(), ": wg-quick's rule there is gone");
        report.removed.push_back(where);
      }
      tracked.erase(key);
      warned.erase(key);
      continue;
    }
    present.insert(key);

    // Keep the first of splitd's rules if it precedes every rule it must; delete the rest.
    std::optional<std::size_t> keep;
    if (!ours.empty() && (!first_guarded || ours.front() < *first_guarded)) keep = ours.front();
    NftBatch batch(c.family, c.table);
    std::optional<std::size_t> insert_index;
    if (!keep) {
      insert_index = batch.insert_rule(
          c.chain, std::move(NftRule(std::string(kRuleComment)).iifname_eq("lo").accept()));
    }
    std::vector<std::uint64_t> deleted;
    for (std::size_t i : ours) {
      if (keep && i == *keep) continue;
      batch.delete_rule(c.chain, (*rules)[i].handle,
                        keep ? "duplicate of splitd's" : "splitd's, behind the VPN's rule");
      deleted.push_back((*rules)[i].handle);
    }

    if (batch.size() == 0) {  // already right
      where.handle = (*rules)[*keep].handle;
      auto t = tracked.find(key);
      if (t == tracked.end() || t->second.handle != where.handle) {
        log::info("VPN coexistence: adopted splitd's rule (handle ", where.handle,
                  ") at the head of ", where.describe(), ", left by an earlier run");
        report.adopted.push_back(where);
        tracked[key] = where;
      }
      warned.erase(key);
      continue;
    }

    if (auto r = batch.commit(requests); !r) {
      if (batch.failure_errno() == ENOENT && !last) {  // the chain or a rule went away meanwhile
        raced = true;
        continue;
      }
      const std::string msg =
          "VPN coexistence: cannot place splitd's rule in " + where.describe() + ": " +
          r.error().message + "; " + who(c.form) +
          " anti-spoofing rule drops splitd's proxied flows. Fix by hand: " + manual_fix(where);
      warn_once(key, msg);
      report.failures.push_back(msg);
      continue;
    }
    warned.erase(key);
    for (std::uint64_t h : deleted) {
      Placement gone = where;
      gone.handle = h;
      log::info("VPN coexistence: removed splitd's rule (handle ", h, ") from ", gone.describe(),
                keep ? ": a duplicate" : ": it was behind the VPN's rule");
      report.removed.push_back(gone);
    }
    if (insert_index) {
      auto handle = batch.inserted_handle(*insert_index);
      if (!handle) {
        // The kernel did not echo the rule: find it by its comment.
        auto again = nft_list_rules(requests, c.family, c.table, c.chain);
        if (again) {
          for (const auto& r : *again) {
            if (r.comment_starts_with(kCommentPrefix)) {
              handle = r.handle;
              break;
            }
          }
        }
      }
      where.handle = handle.value_or(0);
      log::info("VPN coexistence: placed `iifname \"lo\" accept` (handle ", where.handle,
                ") at the head of ", where.describe(), " so that ", who(c.form),
                " anti-spoofing rule lets splitd's answers through lo");
      report.placed.push_back(where);
      tracked[key] = where;
    } else {
      where.handle = (*rules)[*keep].handle;
      tracked[key] = where;
    }
  }

  for (auto it = tracked.begin(); it != tracked.end();) {
    if (present.count(it->first) != 0) {
      ++it;
      continue;
    }
    log::info("VPN coexistence: forgot splitd's rule (handle ", it->second.handle, ") in ",
              it->second.describe(), ": the chain or the VPN's rule in it is gone");
    report.forgotten.push_back(it->second);
    warned.erase(it->first);
    it = tracked.erase(it);
  }
  return raced;
}

Expected<VpnCoexistence::Report, FirewallError> VpnCoexistence::Impl::reconcile() {
  Report report;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    auto raced = reconcile_once(report, attempt + 1 == kAttempts);
    if (!raced) return unexpected(raced.error());
    if (!*raced) return report;
  }
  log::debug("VPN coexistence: the ruleset kept changing; reconciling again on the next event");
  return report;
}

Expected<VpnCoexistence::Report, FirewallError> VpnCoexistence::Impl::remove_all() {
  Report report;
  std::optional<FirewallError> failure;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    failure.reset();
    bool raced = false;
    auto candidates = discover();
    if (!candidates) {
      if (interrupted(candidates.error())) continue;
      return unexpected(candidates.error());
    }
    for (const Candidate& c : *candidates) {
      Placement where{c.form, c.family, c.table, c.chain, 0};
      auto rules = nft_list_rules(requests, c.family, c.table, c.chain);
      if (!rules) {
        if (interrupted(rules.error())) {
          raced = true;
        } else if (!failure) {
          failure = rules.error();
        }
        continue;
      }
      // Only rules that carry splitd's comment: a tracked handle alone is not proof, since
      // a re-created table numbers its rules from 1 again.
      NftBatch batch(c.family, c.table);
      std::vector<std::uint64_t> handles;
      for (const auto& r : *rules) {
        if (!r.comment_starts_with(kCommentPrefix)) continue;
        batch.delete_rule(c.chain, r.handle, "splitd's");
        handles.push_back(r.handle);
      }
      if (handles.empty()) continue;
      if (auto r = batch.commit(requests); !r) {
        if (batch.failure_errno() == ENOENT) {
          raced = true;
        } else if (!failure) {
          failure = r.error();
        }
        continue;
      }
      for (std::uint64_t h : handles) {
        where.handle = h;
        log::info("VPN coexistence: removed splitd's rule (handle ", h, ") from ",
                  where.describe());
        report.removed.push_back(where);
      }
    }
    if (!raced) break;
  }
  tracked.clear();
  warned.clear();
  if (failure) {
    failure->message = "VPN coexistence: removal of splitd's rules: " + failure->message;
    return unexpected(*failure);
  }
  return report;
}

bool VpnCoexistence::is_relevant_event(std::span<const std::uint8_t> datagram,
                                       std::uint32_t own_portid) {
  netlink::MessageReader reader(datagram);
  bool relevant = false;
  while (const nlmsghdr* nlh = reader.next()) {
    if (nlh->nlmsg_type == NLMSG_ERROR || nlh->nlmsg_type == NLMSG_OVERRUN) return true;
    if ((nlh->nlmsg_type >> 8) != NFNL_SUBSYS_NFTABLES) continue;
    switch (nlh->nlmsg_type & 0xff) {
      case NFT_MSG_NEWTABLE:
      case NFT_MSG_DELTABLE:
      case NFT_MSG_NEWCHAIN:
      case NFT_MSG_DELCHAIN:
      case NFT_MSG_NEWRULE:
      case NFT_MSG_DELRULE:
        break;
      default:
        continue;  // sets, elements, objects, NEWGEN: not what splitd's rule depends on
    }
    if (nlh->nlmsg_pid == own_portid && own_portid != 0) continue;  // splitd's own change
    const auto nfg = netlink::fixed_header<nfgenmsg>(*nlh);
    if (!nfg) return true;
    if (nfg->nfgen_family != NFPROTO_IPV4 && nfg->nfgen_family != NFPROTO_IPV6) continue;
    // NFTA_TABLE_NAME, NFTA_CHAIN_TABLE and NFTA_RULE_TABLE are all attribute 1.
    static_assert(NFTA_TABLE_NAME == 1 && NFTA_CHAIN_TABLE == 1 && NFTA_RULE_TABLE == 1);
    std::optional<std::string> table;
    netlink::AttrReader attrs(netlink::attributes(*nlh, sizeof(nfgenmsg)), "nftables event");
    while (const nlattr* a = attrs.next()) {
      if (netlink::attr_type(a) != 1) continue;
      table = netlink::attr_nul_string(a);
      if (!table) return true;  // malformed: resync
      break;
    }
    if (attrs.failure() || !table) return true;
    if (std::string_view(*table).starts_with(kWgQuickTablePrefix) || *table == kIptablesTable)
      relevant = true;
  }
  if (reader.failure()) return true;  // truncated: resync
  return relevant;
}

void VpnCoexistence::Impl::watch() {
  auto next = Clock::now() + std::chrono::milliseconds(kSafetyIntervalMs);
  for (;;) {
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now());
    pollfd fds[2] = {{events.fd(), POLLIN, 0}, {wake.get(), POLLIN, 0}};
    const int rc = ::poll(fds, 2, std::max<int>(0, static_cast<int>(wait.count())));
    if (rc < 0) {
      if (errno == EINTR) continue;
      // Never stop maintaining the rule: fall back to the safety interval alone.
      log::error("VPN coexistence: poll: ", std::strerror(errno), "; checking every second instead");
      std::this_thread::sleep_for(std::chrono::milliseconds(kSafetyIntervalMs));
      next = Clock::now();
      continue;
    }
    if ((fds[1].revents & POLLIN) != 0) return;
    bool run = rc == 0;  // the safety interval is over
    if (fds[0].revents != 0) {
      std::uint32_t own;
      {
        std::lock_guard lock(mutex);
        own = requests.portid();
      }
      for (int i = 0; i < kMaxEventsPerWake; ++i) {
        auto data = events.try_receive();
        if (!data) {
          // Lost events (ENOBUFS): the view is stale, a fresh listing is the resync.
          if (!events.take_overrun()) log::debug("VPN coexistence: ", data.error().message());
          run = true;
          continue;
        }
        if (data->empty()) break;
        if (is_relevant_event(*data, own)) run = true;
      }
    }
    if (!run) continue;
    try {
      std::lock_guard lock(mutex);
      auto r = reconcile();
      if (!r) {
        if (r.error().message != last_error) {
          log::warn("VPN coexistence: ", r.error().message, "; retrying on the next change");
          last_error = r.error().message;
        }
      } else {
        last_error.clear();
      }
    } catch (const std::exception& e) {
      log::error("VPN coexistence: reconcile: ", e.what());
    }
    watcher_reconciles.fetch_add(1, std::memory_order_relaxed);
    next = Clock::now() + std::chrono::milliseconds(kSafetyIntervalMs);
  }
}

VpnCoexistence::VpnCoexistence(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

VpnCoexistence::~VpnCoexistence() {
  if (impl_ && impl_->watcher.joinable()) stop();
}

Expected<std::unique_ptr<VpnCoexistence>, FirewallError> VpnCoexistence::open() {
  auto requests = netlink::Socket::open(NETLINK_NETFILTER, "nfnetlink");
  if (!requests) return unexpected(netlink_error(requests.error()));
  auto events = netlink::Socket::open(NETLINK_NETFILTER, "nftables events");
  if (!events) return unexpected(netlink_error(events.error()));
  auto impl = std::make_unique<Impl>(std::move(*requests), std::move(*events));
  impl->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->wake) {
    return unexpected(
        FirewallError{FirewallErrorCode::kNetlink,
                      std::string("VPN coexistence: eventfd: ") + std::strerror(errno)});
  }
  return std::unique_ptr<VpnCoexistence>(new VpnCoexistence(std::move(impl)));
}

Expected<VpnCoexistence::Report, FirewallError> VpnCoexistence::reconcile() {
  std::lock_guard lock(impl_->mutex);
  return impl_->reconcile();
}

Expected<VpnCoexistence::Report, FirewallError> VpnCoexistence::remove_all() {
  std::lock_guard lock(impl_->mutex);
  return impl_->remove_all();
}

Expected<void, FirewallError> VpnCoexistence::start() {
  if (impl_->watcher.joinable()) return {};
  // Subscribe first, so no change between the first reconcile and the thread is missed.
  if (auto r = impl_->events.join_group(NFNLGRP_NFTABLES); !r) {
    return unexpected(netlink_error(r.error()));
  }
  impl_->events.ensure_receive_buffer(kEventBuffer);
  // Events queued before this start are older than the reconcile below.
  for (int i = 0; i < kMaxEventsPerWake; ++i) {
    auto data = impl_->events.try_receive();
    if (data && data->empty()) break;
  }
  (void)impl_->events.take_overrun();
  if (auto r = reconcile(); !r) {
    (void)impl_->events.leave_group(NFNLGRP_NFTABLES);
    return unexpected(r.error());
  }
  std::uint64_t drained = 0;
  while (::read(impl_->wake.get(), &drained, sizeof drained) > 0) {
  }
  try {
    impl_->watcher = std::thread([impl = impl_.get()] { impl->watch(); });
  } catch (const std::system_error& e) {
    return unexpected(FirewallError{FirewallErrorCode::kNetlink,
                                    std::string("VPN coexistence: watcher thread: ") + e.what()});
  }
  return {};
}

void VpnCoexistence::stop() {
  if (!impl_->watcher.joinable()) return;
  const std::uint64_t one = 1;
  if (::write(impl_->wake.get(), &one, sizeof one) != sizeof one) {
    log::error("VPN coexistence: cannot wake the watcher: ", std::strerror(errno));
  }
  impl_->watcher.join();
  // No events pile up in the kernel while nobody reads them.
  if (auto r = impl_->events.leave_group(NFNLGRP_NFTABLES); !r) log::debug(r.error().message());
  if (auto r = remove_all(); !r) log::warn(r.error().message);
}

bool VpnCoexistence::running() const { return impl_->watcher.joinable(); }

std::vector<VpnCoexistence::Placement> VpnCoexistence::placements() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<Placement> out;
  for (const auto& [key, p] : impl_->tracked) out.push_back(p);
  return out;
}

std::uint64_t VpnCoexistence::watcher_reconciles() const {
  return impl_->watcher_reconciles.load(std::memory_order_relaxed);
}

Expected<VpnCoexistence::Report, FirewallError> VpnCoexistence::remove_leftovers() {
  auto coex = open();
  if (!coex) return unexpected(coex.error());
  return (*coex)->remove_all();
}

}  // namespace splitd::firewall
