#include "daemon/interfaces_text.hpp"

#include <algorithm>
#include <sstream>
#include <vector>

namespace splitd::daemon {
namespace {

using iface::Interface;
using iface::InterfaceSnapshot;
using Family = IpAddress::Family;

std::string addr_or_dash(const std::optional<IpAddress>& ip) {
  return ip ? ip->to_string() : "-";
}

std::string physical_line(const InterfaceSnapshot& snap, Family family) {
  const Interface* itf = snap.physical(family);
  const char* fam = family == Family::kV4 ? "IPv4" : "IPv6";
  if (itf == nullptr) {
    return std::string("  physical ") + fam + "  none (no default route on a non-tunnel interface)";
  }
  std::string line = std::string("  physical ") + fam + "  " + itf->name + "  " +
                     addr_or_dash(itf->address_for(family));
  if (const auto* r = snap.physical_route(family)) {
    line += "  (default";
    if (r->gateway) line += " via " + r->gateway->to_string();
    line += ", metric " + std::to_string(r->metric) + ")";
  } else {
    line += "  (configured)";
  }
  return line;
}

std::string roles(const InterfaceSnapshot& snap, const Interface& itf) {
  std::vector<std::string> parts;
  const Interface* p4 = snap.physical(Family::kV4);
  const Interface* p6 = snap.physical(Family::kV6);
  if (p4 == &itf && p6 == &itf) parts.push_back("physical");
  else if (p4 == &itf) parts.push_back("physical(v4)");
  else if (p6 == &itf) parts.push_back("physical(v6)");
  if (snap.tunnel() == &itf) parts.push_back("tunnel");
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out.empty() ? "-" : out;
}

std::string pad(const std::string& s, std::size_t width) {
  return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' ');
}

}  // namespace

std::string interfaces_text(const InterfaceSnapshot& snap) {
  std::ostringstream out;
  out << "Selected\n" << physical_line(snap, Family::kV4) << "\n"
      << physical_line(snap, Family::kV6) << "\n";
  if (const Interface* t = snap.tunnel()) {
    out << "  tunnel         " << t->name << "  " << addr_or_dash(t->ipv4) << ", "
        << addr_or_dash(t->ipv6) << "  (" << (snap.tunnel_up() ? "up" : "DOWN") << ")\n";
  } else {
    out << "  tunnel         none (no up interface of a tunnel kind)\n";
  }
  out << "\n";

  std::vector<std::vector<std::string>> rows;
  rows.push_back({"INDEX", "NAME", "KIND", "ROLE", "STATE", "MTU", "MAC", "ADDRESSES"});
  for (const auto& itf : snap.interfaces()) {
    std::string addrs;
    for (const auto& a : itf.addresses) {
      addrs += (addrs.empty() ? "" : " ") + a.address.to_string() + "/" +
               std::to_string(a.prefix_len);
    }
    std::string state = itf.up() ? (itf.running() ? "up" : "up,no-carrier") : "down";
    std::string kind = iface::to_string(itf.kind);
    if (!itf.link_kind.empty()) kind += "(" + itf.link_kind + ")";
    rows.push_back({std::to_string(itf.index), itf.name, kind, roles(snap, itf), state,
                    std::to_string(itf.mtu), itf.mac.empty() ? "-" : itf.mac_string(),
                    addrs.empty() ? "-" : addrs});
  }
  std::vector<std::size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size() + 1);
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += i + 1 == row.size() ? row[i] : pad(row[i], widths[i]);
    }
    out << line << "\n";
  }
  return out.str();
}

}  // namespace splitd::daemon
