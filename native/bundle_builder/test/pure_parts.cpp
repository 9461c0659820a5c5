// Drives the parts of acl_bundle_builder that need no CANN library (option parsing, the model files' constant
// order, SHA-256, the manifest text) so tests/native/test_bundle_builder.py can run them on any machine
// that has the GE and metadef headers:
//   pure_parts options ARGS...      parsed options, one "key=value" per line (or "usage: MESSAGE", exit 2)
//   pure_parts onnx-order FILE      "name<TAB>onnx_type" per top-level initializer, in file order
//   pure_parts graphdef-order FILE  "name<TAB>op" per node, in file order
//   pure_parts sha256 FILE          hex digest of the file's bytes
//   pure_parts manifest ARGS...     the manifest for two fixed variables and one input, built with options ARGS
#include <iostream>
#include <stdexcept>
#include <string>

#include "../src/manifest.h"
#include "../src/model_order.h"
#include "../src/options.h"
#include "../src/sha256.h"

using namespace bundle_builder;

int main(int argc, char **argv) {
  if (argc < 2) {
    std::cerr << "usage: pure_parts options|onnx-order|graphdef-order|sha256|manifest ...\n";
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "options" || cmd == "manifest") {
      Options o;
      try {
        o = ParseOptions(argc - 1, argv + 1);
      } catch (const UsageError &e) {
        std::cout << "usage: " << e.message << "\n";
        return 2;
      }
      if (cmd == "manifest") {
        Variable w{"fc.weight", "Initializer_w", "float32", {2, 3}, 24, std::string(64, 'a')};
        Variable b{"fc.bias", "Initializer_b", "float16", {3}, 6, ""};
        DataInput x{"x", "x", "float32", {-1, 2}, 0};
        std::cout << ManifestJson(ManifestInfo{{"infer", "init", "update"}, {x}, {w, b}, "force_fp16"}, o);
        return 0;
      }
      std::cout << "model=" << o.model << "\nframework=" << o.framework << "\noutput=" << o.output
                << "\nmanifest=" << o.manifest << "\nsoc_version=" << o.soc_version
                << "\nprecision_mode=" << o.precision_mode << "\ninit=" << o.init << "\nvariables=";
      for (size_t i = 0; i < o.variables.size(); ++i) {
        std::cout << (i ? "," : "") << o.variables[i];
      }
      std::cout << "\n";
      return 0;
    }
    if (argc != 3) {
      std::cerr << cmd << " takes one FILE\n";
      return 2;
    }
    const std::string bytes = ReadModelFile(argv[2]);
    if (cmd == "sha256") {
      std::cout << Sha256Hex(reinterpret_cast<const uint8_t *>(bytes.data()), bytes.size()) << "\n";
    } else if (cmd == "onnx-order") {
      for (const auto &t : OnnxInitializers(bytes)) {
        std::cout << t.name << "\t" << t.onnx_type << "\n";
      }
    } else if (cmd == "graphdef-order") {
      for (const auto &t : GraphDefNodes(bytes)) {
        std::cout << t.name << "\t" << t.op << "\n";
      }
    } else {
      std::cerr << "unknown command " << cmd << "\n";
      return 2;
    }
  } catch (const std::exception &e) {
    std::cout << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
