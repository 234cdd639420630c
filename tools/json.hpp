// tools/json.hpp: a small JSON reader for sysref-stat. It reads the reports
// the shim writes (one JSON value after another, usually one per line) into
// a tree, keeping where each top-level value lay in the text so that --json
// can copy it out unchanged. Objects keep their keys in file order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sysref_stat::json {

struct member;

struct value {
  enum class kind : uint8_t { null, boolean, number, string, array, object };
  kind k = kind::null;
  bool b = false;
  double num = 0;          // every number, as a double
  bool integral = false;   // written without fraction or exponent and fits in int64_t
  int64_t i = 0;           // exact value when integral
  std::string str;
  std::vector<value> items;     // array
  std::vector<member> members;  // object, in file order

  bool is_object() const { return k == kind::object; }
  bool is_array() const { return k == kind::array; }
  bool is_number() const { return k == kind::number; }
  bool is_string() const { return k == kind::string; }
  // The member named key of an object, or nullptr.
  const value *get(std::string_view key) const;
  // Conveniences that give fallback when the member is absent or of another kind.
  double number(std::string_view key, double fallback = 0) const;
  std::string_view text(std::string_view key, std::string_view fallback = {}) const;
};

struct member {
  std::string key;
  value val;
};

// One top-level value and where it lay in the text.
struct document {
  value root;
  size_t begin = 0, end = 0;  // byte offsets of the value's text
};

// Reads every value in text, separated by white space. Stops at the first
// syntax error: what was read before it is kept and error says what and where
// ("line 3, column 17: expected ',' or '}'"); error is empty on success.
std::vector<document> parse_all(std::string_view text, std::string &error);

}  // namespace sysref_stat::json
