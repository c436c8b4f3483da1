#pragma once
// The modes of lab-load. Each parses its own options (argv after the mode name),
// throws UsageError for a bad command line and std::runtime_error for a runtime failure,
// prints its one JSON object on stdout and returns the exit status.

namespace splitd::bench {

int run_serve(int argc, char** argv);
int run_http(int argc, char** argv);
int run_rr(int argc, char** argv);
int run_idle(int argc, char** argv);
int run_udp(int argc, char** argv);
int run_http_open(int argc, char** argv);
int run_udp_download(int argc, char** argv);
int run_udp_flows(int argc, char** argv);
int run_udp_idle(int argc, char** argv);

}  // namespace splitd::bench
