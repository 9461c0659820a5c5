#include "options.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>

namespace bundle_builder {

std::vector<std::string> Split(const std::string &text, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : text) {
    if (ch == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  out.push_back(cur);
  return out;
}

const std::vector<std::string> &PrecisionModes() {
  static const std::vector<std::string> modes = {
      "force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_mix_precision", "allow_fp32_to_fp16",
      "must_keep_origin_dtype", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "allow_fp32_to_bf16"};
  return modes;
}

std::string Usage() {
  return "usage: acl_bundle_builder --model MODEL --output OUT.om --soc-version SOC\n"
         "         [--framework onnx|tensorflow] [--manifest JSON] [--variables A,B,...] [--no-init]\n"
         "         [--precision-mode MODE] [--input-shape \"x:1,8;y:1,4\"] [--out-nodes \"y:0;z:0\"]\n"
         "         [--input-data-names \"x;y\"] [--input-format NCHW|NHWC|ND]\n"
         "         [--dynamic-batch-size N,N | --dynamic-image-size H,W;H,W | --dynamic-dims V,..;V,..]\n";
}

namespace {

bool EndsWith(const std::string &s, const std::string &suffix) {
  if (s.size() < suffix.size()) {
    return false;
  }
  std::string tail = s.substr(s.size() - suffix.size());
  std::transform(tail.begin(), tail.end(), tail.begin(), [](unsigned char c) { return std::tolower(c); });
  return tail == suffix;
}

void CheckGears(const std::string &text, const std::string &option) {
  if (text.empty()) {
    return;
  }
  for (const auto &gear : Split(text, ';')) {
    for (const auto &v : Split(gear, ',')) {
      // at most 9 digits: std::stoll cannot overflow, and no gear is that large (ATC allows at most 2048 batch)
      if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos || std::stoll(v) <= 0) {
        throw UsageError{option + " must be positive integers (ATC syntax \"224,224;448,448\"), got \"" + text + "\""};
      }
    }
  }
}

}  // namespace

Options ParseOptions(int argc, char **argv) {
  Options o;
  std::map<std::string, std::string *> values = {
      {"--model", &o.model},
      {"--framework", &o.framework},
      {"--output", &o.output},
      {"--manifest", &o.manifest},
      {"--soc-version", &o.soc_version},
      {"--precision-mode", &o.precision_mode},
      {"--input-shape", &o.input_shape},
      {"--out-nodes", &o.out_nodes},
      {"--input-data-names", &o.input_data_names},
      {"--input-format", &o.input_format},
      {"--dynamic-batch-size", &o.dynamic_batch_size},
      {"--dynamic-image-size", &o.dynamic_image_size},
      {"--dynamic-dims", &o.dynamic_dims},
  };
  std::string variables;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    const auto eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    if (arg == "--no-init") {
      o.init = false;
      continue;
    }
    if (arg == "--help" || arg == "-h") {
      throw UsageError{""};
    }
    std::string *target = nullptr;
    if (arg == "--variables") {
      target = &variables;
      o.variables_given = true;
    } else {
      auto it = values.find(arg);
      if (it == values.end()) {
        throw UsageError{"unknown option " + arg};
      }
      target = it->second;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        throw UsageError{arg + " needs a value"};
      }
      value = argv[++i];
    }
    *target = value;
  }
  if (o.model.empty() || o.output.empty() || o.soc_version.empty()) {
    throw UsageError{"--model, --output and --soc-version are required"};
  }
  if (!std::ifstream(o.model, std::ios::binary).good()) {
    throw UsageError{"cannot read the model " + o.model};
  }
  if (o.framework.empty()) {
    o.framework = EndsWith(o.model, ".pb") ? "tensorflow" : "onnx";
  }
  if (o.framework != "onnx" && o.framework != "tensorflow") {
    throw UsageError{"--framework must be onnx or tensorflow, got " + o.framework};
  }
  if (!EndsWith(o.output, ".om") || o.output.size() <= 3) {
    // aclgrphBundleSaveModel appends ".om" itself (hicann/ge compiler/api/aclgrph/ge_ir_build.cc:1557)
    throw UsageError{"--output must end with .om, got " + o.output};
  }
  if (o.manifest.empty()) {
    o.manifest = o.output.substr(0, o.output.size() - 3) + ".manifest.json";
  }
  if (!o.precision_mode.empty()) {
    const auto &modes = PrecisionModes();
    if (std::find(modes.begin(), modes.end(), o.precision_mode) == modes.end()) {
      std::string all;
      for (const auto &m : modes) {
        all += (all.empty() ? "" : ", ") + m;
      }
      throw UsageError{"--precision-mode " + o.precision_mode + " is not one of GE's: " + all};
    }
  }
  const int dynamic = !o.dynamic_batch_size.empty() + !o.dynamic_image_size.empty() + !o.dynamic_dims.empty();
  if (dynamic > 1) {
    throw UsageError{"give at most one of --dynamic-batch-size, --dynamic-image-size and --dynamic-dims (as ATC)"};
  }
  CheckGears(o.dynamic_batch_size, "--dynamic-batch-size");
  CheckGears(o.dynamic_image_size, "--dynamic-image-size");
  CheckGears(o.dynamic_dims, "--dynamic-dims");
  if (o.framework == "onnx" && (!o.out_nodes.empty() || !o.input_data_names.empty())) {
    throw UsageError{"--out-nodes and --input-data-names apply to TensorFlow models"};
  }
  if (o.variables_given) {
    for (const auto &v : Split(variables, ',')) {
      if (v.empty()) {
        throw UsageError{"--variables has an empty name in \"" + variables + "\""};
      }
      if (std::find(o.variables.begin(), o.variables.end(), v) != o.variables.end()) {
        throw UsageError{"variable " + v + " is listed twice"};
      }
      o.variables.push_back(v);
    }
  }
  return o;
}

}  // namespace bundle_builder
