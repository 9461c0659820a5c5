#include "manifest.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

namespace bundle_builder {
namespace {

std::string Quote(const std::string &s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));  // UTF-8 passes through
        }
    }
  }
  return out + "\"";
}

std::string Ints(const std::vector<int64_t> &v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(v[i]);
  }
  return s + "]";
}

// ATC gear text "1,8;4,16" -> [[1, 8], [4, 16]]; batch sizes "1,8" -> [1, 8].
std::string Gears(const std::string &text, bool flat) {
  if (text.empty()) {
    return "[]";
  }
  std::string s = "[";
  bool first = true;
  for (const auto &gear : Split(text, flat ? ',' : ';')) {
    std::vector<int64_t> vals;
    for (const auto &v : Split(gear, ',')) {
      vals.push_back(std::stoll(v));
    }
    s += (first ? "" : ", ") + (flat ? std::to_string(vals[0]) : Ints(vals));
    first = false;
  }
  return s + "]";
}

}  // namespace

std::string ManifestJson(const ManifestInfo &info, const Options &options) {
  std::ostringstream o;
  o << "{\n  \"format\": \"acl-bundle-manifest\",\n  \"version\": 1,\n  \"kind\": \"bundle\",\n";
  o << "  \"graphs\": [";
  for (size_t i = 0; i < info.graphs.size(); ++i) {
    o << (i ? ", " : "") << Quote(info.graphs[i]);
  }
  o << "],\n  \"model_count\": " << info.graphs.size() << ",\n  \"inputs\": [";
  for (size_t i = 0; i < info.inputs.size(); ++i) {
    const auto &in = info.inputs[i];
    o << (i ? ",\n" : "\n") << "    {\"name\": " << Quote(in.name) << ", \"dtype\": " << Quote(in.dtype)
      << ", \"shape\": " << Ints(in.shape) << "}";
  }
  o << (info.inputs.empty() ? "" : "\n  ") << "],\n  \"variables\": [";
  for (size_t i = 0; i < info.variables.size(); ++i) {
    const auto &v = info.variables[i];
    o << (i ? ",\n" : "\n") << "    {\"name\": " << Quote(v.name) << ", \"dtype\": " << Quote(v.dtype)
      << ", \"shape\": " << Ints(v.shape) << ", \"index\": " << i << ", \"nbytes\": " << v.nbytes
      << ", \"sha256\": " << (v.sha256.empty() || !options.init ? "null" : Quote(v.sha256)) << "}";
  }
  o << "\n  ],\n";
  o << "  \"batch_sizes\": " << Gears(options.dynamic_batch_size, true) << ",\n";
  o << "  \"dynamic_image_size\": " << Gears(options.dynamic_image_size, false) << ",\n";
  o << "  \"dynamic_dims\": " << Gears(options.dynamic_dims, false) << ",\n";
  o << "  \"has_init\": " << (options.init ? "true" : "false") << ",\n";
  o << "  \"precision_mode\": " << Quote(info.precision_mode) << ",\n";
  o << "  \"target\": \"ascend\",\n  \"soc_version\": " << Quote(options.soc_version) << "\n}\n";
  return o.str();
}

void WriteFileAtomic(const std::string &path, const std::string &text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write " + tmp);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp + " to " + path);
  }
}

}  // namespace bundle_builder
