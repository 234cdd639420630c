// Command line and output of the benchmarks; see report.hpp.
#include "report.hpp"

#include <sched.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

namespace sysref_bench {

namespace {

bool parse_num(const char *s, std::uint64_t &out)
{
	char *end = nullptr;
	errno = 0;
	const unsigned long long v = std::strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v == 0)
		return false;
	out = v;
	return true;
}

[[noreturn]] void usage(const char *prog, bool with_size, int rc)
{
	std::FILE *f = rc ? stderr : stdout;
	std::fprintf(f, "usage: %s %s[--reps N] [--pairs N] [--json]\n", prog,
	             with_size ? "[--size N] " : "");
	if (with_size)
		std::fprintf(f, "  --size N   object size in bytes (default 64)\n");
	std::fprintf(f,
	             "  --reps N   measured repetitions per allocator (default 11)\n"
	             "  --pairs N  alloc/free pairs per repetition (default: "
	             "calibrated to ~30 ms)\n"
	             "  --json     JSON lines instead of the table\n");
	std::exit(rc);
}

[[noreturn]] void bad_arg(const char *prog, bool with_size, const std::string &what)
{
	std::fprintf(stderr, "%s: %s\n", prog, what.c_str());
	usage(prog, with_size, 2);
}

bool is_opt(const std::string &arg, const char *name)
{
	const std::string n = name;
	return arg == n || arg.rfind(n + "=", 0) == 0;
}

std::string fmt_ratio(double v, bool json)
{
	char buf[32];
	if (v <= 0)
		return json ? "null" : "-";
	std::snprintf(buf, sizeof buf, json ? "%.4f" : "%.2f", v);
	return buf;
}

} // namespace

Options parse_options(int argc, char **argv, const char *prog, bool with_size)
{
	Options o;
	for (int i = 1; i < argc; i++) {
		std::string arg = argv[i], val;
		if (arg == "--json") {
			o.json = true;
			continue;
		}
		if (arg == "-h" || arg == "--help")
			usage(prog, with_size, 0);
		if (!(with_size && is_opt(arg, "--size")) && !is_opt(arg, "--reps") &&
		    !is_opt(arg, "--pairs"))
			bad_arg(prog, with_size, "unknown option " + arg);
		if (const auto eq = arg.find('='); eq != std::string::npos) {
			val = arg.substr(eq + 1);
			arg.resize(eq);
		} else if (i + 1 < argc) {
			val = argv[++i];
		}
		std::uint64_t v = 0;
		if (!parse_num(val.c_str(), v))
			bad_arg(prog, with_size,
			        arg + " needs a positive integer, got '" + val + "'");
		if (arg == "--size") {
			if (v > (std::uint64_t{1} << 30))
				bad_arg(prog, with_size, "--size is limited to 1 GiB");
			o.size = v;
		} else if (arg == "--reps") {
			if (v > 10000)
				bad_arg(prog, with_size, "--reps is limited to 10000");
			o.reps = static_cast<unsigned>(v);
		} else {
			o.pairs = v;
		}
	}
	return o;
}

std::vector<int> usable_cpus(std::size_t max)
{
	std::vector<int> cpus;
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof set, &set) == 0)
		for (int c = 0; c < CPU_SETSIZE && cpus.size() < max; c++)
			if (CPU_ISSET(c, &set))
				cpus.push_back(c);
	return cpus;
}

std::string json_str(const std::string &s)
{
	std::string out = "\"";
	for (const char c : s) {
		if (c == '"' || c == '\\') {
			out += '\\';
			out += c;
		} else if (static_cast<unsigned char>(c) < 0x20) {
			char buf[8];
			std::snprintf(buf, sizeof buf, "\\u%04x", c);
			out += buf;
		} else {
			out += c;
		}
	}
	return out + "\"";
}

void note(bool json, const char *type, const std::string &what,
          const std::string &reason)
{
	if (json)
		std::printf("{\"type\":\"%s\",\"name\":%s,\"reason\":%s}\n", type,
		            json_str(what).c_str(), json_str(reason).c_str());
	else
		std::printf("# %s %s: %s\n", what.c_str(), type, reason.c_str());
}

void print_columns(bool json)
{
	if (!json)
		std::printf("%-8s %-15s %11s %9s %9s %8s %8s %9s %9s\n", "pattern",
		            "allocator", "pairs/rep", "median", "min", "x mimal",
		            "x best", "minflt", "flt warm");
}

double median_of(const std::vector<Row> &rows, const std::string &name)
{
	for (const Row &r : rows)
		if (r.a->name == name)
			return r.median;
	return 0;
}

double best_peer_median(const std::vector<Row> &rows)
{
	double best = 0;
	for (const Row &r : rows)
		if (r.a->kind == Kind::peer && (best == 0 || r.median < best))
			best = r.median;
	return best;
}

void report(const Options &o, const char *pattern, std::size_t size,
            const std::vector<Row> &rows)
{
	const double mi = median_of(rows, "mimalloc");
	const double best = best_peer_median(rows);
	std::string best_name;
	for (const Row &r : rows)
		if (r.a->kind == Kind::peer && r.median == best && best_name.empty())
			best_name = r.a->name;
	const std::string size_json = size ? std::to_string(size) : "null";
	for (const Row &r : rows) {
		const bool ranked = r.a->kind != Kind::baseline;
		const double x_mi = ranked && mi > 0 ? r.median / mi : 0;
		const double x_best = ranked && best > 0 ? r.median / best : 0;
		if (o.json)
			std::printf("{\"type\":\"result\",\"pattern\":\"%s\",\"allocator\":%s,"
			            "\"kind\":\"%s\",\"size\":%s,\"reps\":%u,\"pairs\":%" PRIu64
			            ",\"median_ns\":%.3f,\"min_ns\":%.3f,\"ratio_mimalloc\":%s,"
			            "\"ratio_best_peer\":%s,\"best_peer\":%s,\"minflt\":%ld,"
			            "\"minflt_warmup\":%ld}\n",
			            pattern, json_str(r.a->name).c_str(), kind_name(r.a->kind),
			            size_json.c_str(), o.reps, r.pairs, r.median, r.min,
			            fmt_ratio(x_mi, true).c_str(), fmt_ratio(x_best, true).c_str(),
			            best_name.empty() ? "null" : json_str(best_name).c_str(),
			            r.flt, r.flt_warm);
		else
			std::printf("%-8s %-15s %11" PRIu64 " %9.2f %9.2f %8s %8s %9ld %9ld\n",
			            pattern, r.a->name.c_str(), r.pairs, r.median, r.min,
			            fmt_ratio(x_mi, false).c_str(),
			            fmt_ratio(x_best, false).c_str(), r.flt, r.flt_warm);
	}
	if (!o.json && !best_name.empty())
		std::printf("%-8s (fastest peer: %s)\n", pattern, best_name.c_str());
}

} // namespace sysref_bench
