// tools/stat.hpp: what sysref-stat knows about one process once the program
// has exited (its stats file, read and parsed), and the two renderings of it.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "json.hpp"

namespace sysref_stat {

struct process {
  long pid = 0;
  bool parent = false;           // the process sysref-stat started
  std::string path;              // its stats file
  std::string text;              // the file's contents
  std::vector<json::document> docs;
  const json::value *report = nullptr;       // the last object of kind "report"
  const json::document *report_doc = nullptr;
  std::vector<const json::value *> samples;  // objects of kind "sample", in file order, of the
                                             // last program this process ran (see execve)
  size_t earlier_samples = 0;    // samples of programs it ran before, not kept
  std::string error;             // a read or syntax error (what came before it is kept)
  std::string name;              // for the program's process: its argv[0], if it wrote nothing

  // Reads and parses path; fills report and samples.
  void load();
  // The program name: from the report, else from the last sample, else name, else "?".
  std::string program() const;
};

// How the program sysref-stat ran ended, for the parent's heading.
struct outcome {
  bool exited = true;
  int code = 0;    // exit status, or the signal number when !exited
};

// Text: a heading per process, then its report's sections as tables.
void print_text(FILE *out, const std::vector<process> &procs, const outcome &how);
// JSON: an array with one object per process (the report as written, with
// "samples":[...] appended when the file held samples).
void print_json(FILE *out, const std::vector<process> &procs);
// SVG: per process, live heap and resident bytes over time and the request
// size histogram. Returns false (errno set) when writing failed.
bool plot_svg(FILE *out, const std::vector<process> &procs);

// Shared formatting.
std::string format_count(double n);   // 1,234,567 (integers) or 3 significant digits
std::string format_bytes(double n);   // 512 B, 1.50 KiB, 12.3 MiB, ...
std::string format_size(double n);    // short bucket labels: 8, 512, 4K, 2M, 1G
// The label of bucket j of a "histogram" array: its bound, "> 1M" for the open one.
std::string bucket_label(const json::value &hist, size_t j);

}  // namespace sysref_stat
