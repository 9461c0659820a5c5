// Command line of acl_bundle_builder: the same options as `acl-bundle build`, in ATC's value syntax.
#pragma once

#include <string>
#include <vector>

namespace bundle_builder {

struct Options {
  std::string model;             // ONNX file or TF frozen GraphDef (.pb)
  std::string framework;         // "onnx" or "tensorflow" (default: from the file suffix)
  std::string output;            // bundle path, ends with .om
  std::string manifest;          // default: <output without .om>.manifest.json
  std::string soc_version;       // required, e.g. Ascend310P3
  std::string precision_mode;    // ATC --precision_mode; empty: GE's default (force_fp16 for inference)
  std::string input_shape;       // ATC --input_shape "x:1,8;y:-1,4"
  std::string out_nodes;         // ATC --out_nodes "y:0;z:0" (TF)
  std::string input_data_names;  // parser input_data_names "x;y": data input order (TF)
  std::string input_format;      // ATC --input_format (NCHW, NHWC, ND, ...)
  std::string dynamic_batch_size;  // "1,8,32"
  std::string dynamic_image_size;  // "224,224;448,448"
  std::string dynamic_dims;        // "1,16;4,32"
  bool variables_given = false;
  std::vector<std::string> variables;  // the model's names: ONNX initializers, TF "dense/kernel:0"
  bool init = true;
};

// Parse argv; on a usage mistake throw UsageError with one line saying what was wrong.
struct UsageError {
  std::string message;
};

Options ParseOptions(int argc, char **argv);
std::string Usage();

// The precision modes GE accepts (hicann/ge compiler/api/aclgrph/option_utils.cc:1317-1326).
const std::vector<std::string> &PrecisionModes();

std::vector<std::string> Split(const std::string &text, char sep);

}  // namespace bundle_builder
