// Command line and output shared by the libsysref benchmarks (bench_slab,
// bench_cache): one table row or one JSON line per allocator and pattern, so
// every benchmark prints the same columns and the same JSON keys.
#ifndef SYSREF_BENCH_REPORT_HPP
#define SYSREF_BENCH_REPORT_HPP

#include "patterns.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sysref_bench {

inline constexpr double kTargetNs = 30e6; // one repetition ~30 ms (asked: 20-50)

struct Options {
	std::size_t size = 64;
	unsigned reps = 11;
	std::uint64_t pairs = 0; // 0: calibrated per allocator and pattern
	bool json = false;
};

// Parses --reps N, --pairs N, --json, -h/--help, and --size N when
// with_size; prints usage and exits on anything else.
Options parse_options(int argc, char **argv, const char *prog, bool with_size);

// The first `max` CPUs this process may run on, in order (usually 0, 1).
std::vector<int> usable_cpus(std::size_t max);

std::string json_str(const std::string &s);

// A line about something not measured: "# what type: reason", or a JSON
// object {"type":type,"name":what,"reason":reason}.
void note(bool json, const char *type, const std::string &what,
          const std::string &reason);

// The table's column header (nothing in JSON mode).
void print_columns(bool json);

// Ratios of each row's median to mimalloc's and to the fastest peer's (the
// fastest Kind::peer row of this pattern), then one line per row. size 0
// means a mixed-size pattern (JSON "size":null).
void report(const Options &o, const char *pattern, std::size_t size,
            const std::vector<Row> &rows);

// The median of row `name` in rows, 0 if absent.
double median_of(const std::vector<Row> &rows, const std::string &name);
// The fastest peer's median in rows, 0 if none.
double best_peer_median(const std::vector<Row> &rows);

} // namespace sysref_bench

#endif
