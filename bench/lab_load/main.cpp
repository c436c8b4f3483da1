// lab-load: the load generator and echo server of the lab benchmark (bench/lab-bench).
//
//   lab-load serve --listen IP:PORT [--listen IP:PORT ...] [--http] [--pidfile FILE]
//   lab-load http  --target IP:PORT [--host NAME] [--path /] [--concurrency 50]
//                  [--duration 10] [--warmup 1] [--timeout-ms 2000] [--threads 1]
//                  [--bind-dev IFNAME]
//   lab-load rr    --target IP:PORT [--size 64] [--duration 10] [--warmup 0.5]
//                  [--skip-line] [--bind-dev IFNAME]
//   lab-load idle  --target IP:PORT --count N [--parallel 256] [--ready-file FILE]
//                  [--hold SECONDS] [--timeout-ms 5000] [--bind-dev IFNAME]
//   lab-load udp   --target IP:PORT [--size 1400] [--window 256] [--duration 10]
//                  [--warmup 0.5] [--bind-dev IFNAME]
//   lab-load http-open --target IP:PORT [--rate 2000] [--max-in-flight 4096] [--host NAME]
//                  [--path /] [--duration 10] [--warmup 1] [--timeout-ms 2000] [--threads 1]
//                  [--bind-dev IFNAME]
//   lab-load udp-download --target IP:PORT [--size 1200] [--rate 0] [--duration 10]
//                  [--warmup 0.5] [--bind-dev IFNAME]
//   lab-load udp-flows --target IP:PORT [--flows 1000] [--size 1200] [--duration 10]
//                  [--warmup 0.5] [--bind-dev IFNAME]
//   lab-load udp-idle --target IP:PORT --count N [--parallel 200] [--tries 3]
//                  [--timeout-ms 1000] [--ready-file FILE] [--hold SECONDS] [--bind-dev IFNAME]
//
// Every mode prints one JSON object on stdout when it ends; messages go to stderr.
// Exit status: 0 done, 1 runtime failure, 2 bad command line.

#include <signal.h>

#include <cstdio>
#include <exception>
#include <new>
#include <string_view>

#include "common.hpp"
#include "modes.hpp"

namespace {

constexpr std::string_view kUsage =
    "usage: lab-load MODE [OPTIONS]\n"
    "  serve --listen IP:PORT [--listen IP:PORT ...] [--http] [--pidfile FILE]\n"
    "        TCP echo (or one HTTP 200 per connection with --http), UDP echo and the\n"
    "        sending side of udp-download\n"
    "  http  --target IP:PORT [--host NAME] [--path /] [--concurrency 50] [--duration 10]\n"
    "        [--warmup 1] [--timeout-ms 2000] [--threads 1] [--bind-dev IFNAME]\n"
    "        short HTTP/1.1 connections per second\n"
    "  rr    --target IP:PORT [--size 64] [--duration 10] [--warmup 0.5] [--skip-line]\n"
    "        [--bind-dev IFNAME]\n"
    "        request/response latency on one TCP connection\n"
    "  idle  --target IP:PORT --count N [--parallel 256] [--ready-file FILE] [--hold SECONDS]\n"
    "        [--timeout-ms 5000] [--bind-dev IFNAME]\n"
    "        opens N connections and holds them until SIGTERM/SIGINT or --hold\n"
    "  udp   --target IP:PORT [--size 1400] [--window 256] [--duration 10] [--warmup 0.5]\n"
    "        [--bind-dev IFNAME]\n"
    "        datagrams per second through a UDP echo server\n"
    "  http-open --target IP:PORT [--rate 2000] [--max-in-flight 4096] [--host NAME] [--path /]\n"
    "        [--duration 10] [--warmup 1] [--timeout-ms 2000] [--threads 1] [--bind-dev IFNAME]\n"
    "        short HTTP/1.1 connections started at a fixed rate; latency from when each was due\n"
    "  udp-download --target IP:PORT [--size 1200] [--rate 0] [--duration 10] [--warmup 0.5]\n"
    "        [--bind-dev IFNAME]\n"
    "        one flow, lab-load serve sending numbered datagrams (rate 0: as fast as it can)\n"
    "  udp-flows --target IP:PORT [--flows 1000] [--size 1200] [--duration 10] [--warmup 0.5]\n"
    "        [--bind-dev IFNAME]\n"
    "        concurrent ping-pong flows (a socket each) through a UDP echo server\n"
    "  udp-idle --target IP:PORT --count N [--parallel 200] [--tries 3] [--timeout-ms 1000]\n"
    "        [--ready-file FILE] [--hold SECONDS] [--bind-dev IFNAME]\n"
    "        opens N UDP flows (one echoed datagram each) and holds them until SIGTERM/SIGINT\n"
    "Addresses are numeric: 192.0.2.1:80 or [2001:db8::1]:80. Durations are seconds.\n"
    "Prints one JSON object on stdout. Exit status: 0 ok, 1 runtime failure, 2 bad usage.\n";

}  // namespace

int main(int argc, char** argv) {
  using namespace splitd::bench;
  // A peer that resets must show up as EPIPE/ECONNRESET, not kill the process.
  ::signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    std::fprintf(stderr, "lab-load: no mode given\n%s", kUsage.data());
    return 2;
  }
  const std::string_view mode = argv[1];
  if (mode == "-h" || mode == "--help" || mode == "help") {
    std::fputs(kUsage.data(), stdout);
    return 0;
  }
  const int sub_argc = argc - 2;
  char** sub_argv = argv + 2;
  try {
    if (mode == "serve") return run_serve(sub_argc, sub_argv);
    if (mode == "http") return run_http(sub_argc, sub_argv);
    if (mode == "rr") return run_rr(sub_argc, sub_argv);
    if (mode == "idle") return run_idle(sub_argc, sub_argv);
    if (mode == "udp") return run_udp(sub_argc, sub_argv);
    if (mode == "http-open") return run_http_open(sub_argc, sub_argv);
    if (mode == "udp-download") return run_udp_download(sub_argc, sub_argv);
    if (mode == "udp-flows") return run_udp_flows(sub_argc, sub_argv);
    if (mode == "udp-idle") return run_udp_idle(sub_argc, sub_argv);
    std::fprintf(stderr, "lab-load: unknown mode '%s'\n%s", argv[1], kUsage.data());
    return 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "lab-load %s\n(lab-load --help shows every mode and option)\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fputs("lab-load: out of memory\n", stderr);
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lab-load %s: %s\n", argv[1], e.what());
    return 1;
  }
}
