// tools/json.cpp: a recursive-descent JSON reader (RFC 8259), see json.hpp.
#include "json.hpp"

#include <charconv>
#include <cstdlib>
#include <string>

namespace sysref_stat::json {

const value *value::get(std::string_view key) const {
  if (k != kind::object) return nullptr;
  for (const member &m : members)
    if (m.key == key) return &m.val;
  return nullptr;
}

double value::number(std::string_view key, double fallback) const {
  const value *v = get(key);
  return v && v->k == kind::number ? v->num : fallback;
}

std::string_view value::text(std::string_view key, std::string_view fallback) const {
  const value *v = get(key);
  return v && v->k == kind::string ? std::string_view(v->str) : fallback;
}

namespace {

// Deeper nesting than any report has; bounds the recursion on bad input.
constexpr int max_depth = 256;

class parser {
 public:
  explicit parser(std::string_view text) : s_(text) {}

  std::vector<document> all(std::string &error) {
    std::vector<document> docs;
    for (;;) {
      skip_space();
      if (pos_ == s_.size()) break;
      document d;
      d.begin = pos_;
      if (!parse_value(d.root, 0)) break;
      d.end = pos_;
      docs.push_back(std::move(d));
    }
    error = error_;
    return docs;
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  std::string error_;

  bool fail(const char *what) {
    if (error_.empty()) {
      size_t line = 1, col = 1;
      for (size_t j = 0; j < pos_ && j < s_.size(); j++) {
        if (s_[j] == '\n') {
          line++;
          col = 1;
        } else {
          col++;
        }
      }
      error_ = "line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + what;
    }
    return false;
  }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }

  void skip_space() {
    while (!at_end() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      pos_++;
  }

  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return fail("unknown literal");
    pos_ += word.size();
    return true;
  }

  bool parse_value(value &v, int depth) {
    if (depth > max_depth) return fail("nested too deeply");
    skip_space();
    switch (peek()) {
      case '{': return parse_object(v, depth);
      case '[': return parse_array(v, depth);
      case '"': v.k = value::kind::string; return parse_string(v.str);
      case 't': v.k = value::kind::boolean; v.b = true; return literal("true");
      case 'f': v.k = value::kind::boolean; v.b = false; return literal("false");
      case 'n': v.k = value::kind::null; return literal("null");
      case '\0':
        if (at_end()) return fail("unexpected end of input");
        return fail("unexpected character");
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number(v);
        return fail("unexpected character");
    }
  }

  bool parse_object(value &v, int depth) {
    v.k = value::kind::object;
    pos_++;  // '{'
    skip_space();
    if (peek() == '}') {
      pos_++;
      return true;
    }
    for (;;) {
      skip_space();
      if (peek() != '"') return fail("expected a string key");
      member m;
      if (!parse_string(m.key)) return false;
      skip_space();
      if (peek() != ':') return fail("expected ':'");
      pos_++;
      if (!parse_value(m.val, depth + 1)) return false;
      v.members.push_back(std::move(m));
      skip_space();
      if (peek() == ',') {
        pos_++;
        continue;
      }
      if (peek() == '}') {
        pos_++;
        return true;
      }
      return fail("expected ',' or '}'");
    }
  }

  bool parse_array(value &v, int depth) {
    v.k = value::kind::array;
    pos_++;  // '['
    skip_space();
    if (peek() == ']') {
      pos_++;
      return true;
    }
    for (;;) {
      value item;
      if (!parse_value(item, depth + 1)) return false;
      v.items.push_back(std::move(item));
      skip_space();
      if (peek() == ',') {
        pos_++;
        continue;
      }
      if (peek() == ']') {
        pos_++;
        return true;
      }
      return fail("expected ',' or ']'");
    }
  }

  static void put_utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool hex4(uint32_t &cp) {
    if (pos_ + 4 > s_.size()) return fail("short \\u escape");
    cp = 0;
    for (int j = 0; j < 4; j++) {
      char c = s_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') cp |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') cp |= static_cast<uint32_t>(c - 'A' + 10);
      else return fail("bad hex digit in \\u escape");
    }
    return true;
  }

  bool parse_string(std::string &out) {
    pos_++;  // '"'
    for (;;) {
      if (at_end()) return fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_end()) return fail("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
            uint32_t lo = 0;
            if (s_.substr(pos_, 2) != "\\u") return fail("lone surrogate in \\u escape");
            pos_ += 2;
            if (!hex4(lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF) return fail("bad surrogate pair in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return fail("lone surrogate in \\u escape");
          }
          put_utf8(out, cp);
          break;
        }
        default: return fail("unknown escape in string");
      }
    }
  }

  bool digits() {
    size_t start = pos_;
    while (peek() >= '0' && peek() <= '9') pos_++;
    return pos_ > start;
  }

  bool parse_number(value &v) {
    size_t start = pos_;
    bool integral = true;
    if (peek() == '-') pos_++;
    if (peek() == '0') {
      pos_++;
    } else if (!digits()) {
      return fail("bad number");
    }
    if (peek() == '.') {
      integral = false;
      pos_++;
      if (!digits()) return fail("bad number: digits expected after '.'");
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      pos_++;
      if (peek() == '+' || peek() == '-') pos_++;
      if (!digits()) return fail("bad number: digits expected in exponent");
    }
    std::string text(s_.substr(start, pos_ - start));  // strtod needs a terminated string
    v.k = value::kind::number;
    v.num = std::strtod(text.c_str(), nullptr);
    if (integral) {
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v.i);
      v.integral = ec == std::errc() && end == text.data() + text.size();
    }
    return true;
  }
};

}  // namespace

std::vector<document> parse_all(std::string_view text, std::string &error) {
  parser p(text);
  return p.all(error);
}

}  // namespace sysref_stat::json
