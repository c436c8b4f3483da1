#pragma once

#include <optional>
#include <sstream>
#include <string>
#include <string_view>

namespace splitd::log {

enum class Level { kTrace = 0, kDebug, kInfo, kWarn, kError };

// Parses "trace|debug|info|warn|error"; nullopt for anything else.
std::optional<Level> parse_level(std::string_view name);
std::string_view level_name(Level level);

// Process-wide threshold; lines below it are dropped before formatting.
void set_level(Level level);
Level level();
inline bool enabled(Level l) { return l >= level(); }

// Writes one line "TIME LEVEL message" to stderr with a single write(2), so lines from
// several threads never interleave.
void write(Level level, std::string_view message);

// log::info("session ", id, " closed after ", ms, " ms"): arguments are streamed.
template <typename... Args>
void emit(Level l, const Args&... args) {
  if (!enabled(l)) return;
  std::ostringstream out;
  (out << ... << args);
  write(l, out.str());
}

template <typename... Args> void trace(const Args&... args) { emit(Level::kTrace, args...); }
template <typename... Args> void debug(const Args&... args) { emit(Level::kDebug, args...); }
template <typename... Args> void info(const Args&... args) { emit(Level::kInfo, args...); }
template <typename... Args> void warn(const Args&... args) { emit(Level::kWarn, args...); }
template <typename... Args> void error(const Args&... args) { emit(Level::kError, args...); }

}  // namespace splitd::log
