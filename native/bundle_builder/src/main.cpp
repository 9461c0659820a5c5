// acl_bundle_builder: build an Ascend bundle model (.om with infer, [init] and update graphs sharing the
// variables) from an ONNX model or a TensorFlow frozen GraphDef with the GE graph API, and write the manifest
// the simulator builder writes.  Steps (hicann/ge docs/zh/user_guides/graph_dev/more_features/weight_update.md):
//   aclgrphParseONNX / aclgrphParseTensorFlow -> aclgrphBuildInitialize -> aclgrphConvertToWeightRefreshableGraphs
//   -> aclgrphBundleBuildModel -> aclgrphBundleSaveModel -> aclgrphBuildFinalize.
//
// Graph order.  aclgrphBundleBuildModel builds graph_with_options[i] as sub-model i
// (compiler/api/aclgrph/ge_ir_build.cc:1448-1464) and packs them in that order after the variable partition
// (base/common/helper/model_helper.cc:1047-1057); loading walks the partition table in order
// (api/acl/acl_model/model/model.cpp:341-349) and loads each sub-model in turn into loadedSubModelId
// (model.cpp:1241-1252), which aclmdlBundleGetModelId indexes (model.cpp:1394).  So bundle index i is the
// i-th graph given here: infer, init, update (the order of weight_update.md), or infer, update with --no-init.
//
// Variable order.  aclgrphConvertToWeightRefreshableGraphs keeps const_names' order: the Variable nodes are
// made in that order (ge_ir_build.cc:1186-1206) and update-graph Data i, with ATTR_NAME_INDEX i, feeds
// variable i (ge_ir_build.cc:1286-1294).  The manifest lists the variables in the order passed.
//
// Exit codes: 0 built; 2 usage mistake; 1 a GE call or file write failed (one line: the call, its status and
// GE's own error message, GEGetErrorMsgV2 from ge/ge_api.h).
#include <cstdio>
#include <exception>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "ge/ge_api.h"
#include "ge/ge_api_types.h"
#include "ge/ge_ir_build.h"
#include "graph/graph.h"
#include "manifest.h"
#include "model_order.h"
#include "options.h"
#include "parser/onnx_parser.h"
#include "parser/tensorflow_parser.h"
#include "variables.h"

namespace {

using bundle_builder::Options;
using OptionMap = std::map<ge::AscendString, ge::AscendString>;

const char *const kProg = "acl_bundle_builder";
// GE's inference default: "在线推理场景下，参数默认值为force_fp16" (hicann/ge
// docs/zh/api/graph_engine_api/cpp/ge/options_params/precision_tuning.md:189; ATC: api/atc/main_impl.cc:660).
const char *const kDefaultPrecisionMode = "force_fp16";

struct GeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void Check(ge::graphStatus status, const std::string &call) {
  if (status == ge::GRAPH_SUCCESS) {
    return;
  }
  std::string message = ge::GEGetErrorMsgV2().GetString() == nullptr ? "" : ge::GEGetErrorMsgV2().GetString();
  for (auto &c : message) {
    if (c == '\n' || c == '\r') {
      c = ' ';
    }
  }
  char code[32];
  std::snprintf(code, sizeof(code), "0x%08x", static_cast<unsigned>(status));
  throw GeError(call + " failed with status " + std::to_string(status) + " (" + code + ")" +
                (message.empty() ? ": GE reported no message (see the plog under $HOME/ascend/log)" : ": " + message));
}

void Put(OptionMap &m, const char *key, const std::string &value) {
  if (!value.empty()) {  // aclgrphBundleBuildModel refuses empty values (ge_ir_build.cc:1452-1454)
    m[ge::AscendString(key)] = ge::AscendString(value.c_str());
  }
}

// Calls aclgrphBuildFinalize on every path once aclgrphBuildInitialize succeeded.
struct BuildSession {
  explicit BuildSession(OptionMap &global) { Check(ge::aclgrphBuildInitialize(global), "aclgrphBuildInitialize"); }
  ~BuildSession() { ge::aclgrphBuildFinalize(); }
  BuildSession(const BuildSession &) = delete;
  BuildSession &operator=(const BuildSession &) = delete;
};

ge::Graph Parse(const Options &o) {
  OptionMap parser;
  Put(parser, ge::ir_option::INPUT_SHAPE, o.input_shape);
  ge::Graph graph;
  if (o.framework == "onnx") {
    Check(ge::aclgrphParseONNX(o.model.c_str(), parser, graph), "aclgrphParseONNX(" + o.model + ")");
  } else {
    Put(parser, ge::ir_option::OUT_NODES, o.out_nodes);
    Put(parser, ge::ir_option::INPUT_DATA_NAMES, o.input_data_names);
    Check(ge::aclgrphParseTensorFlow(o.model.c_str(), parser, graph), "aclgrphParseTensorFlow(" + o.model + ")");
  }
  return graph;
}

int Run(const Options &o) {
  const std::string bytes = bundle_builder::ReadModelFile(o.model);
  const auto file_order = o.framework == "onnx" ? bundle_builder::OnnxInitializers(bytes)
                                                : bundle_builder::GraphDefNodes(bytes);
  ge::Graph origin = Parse(o);
  const auto inputs = bundle_builder::DataInputs(origin, o);
  const auto variables = bundle_builder::ChooseVariables(origin, o, file_order);

  OptionMap global;
  Put(global, ge::ir_option::SOC_VERSION, o.soc_version);
  Put(global, ge::ir_option::PRECISION_MODE, o.precision_mode);  // every graph of the bundle shares it
  BuildSession session(global);

  std::vector<ge::AscendString> const_names;
  for (const auto &v : variables) {
    const_names.emplace_back(v.ge_const.c_str());
  }
  ge::WeightRefreshableGraphs graphs;
  Check(ge::aclgrphConvertToWeightRefreshableGraphs(origin, const_names, graphs),
        "aclgrphConvertToWeightRefreshableGraphs");

  OptionMap infer_options;  // data-input options belong to the infer graph only: the others have no such inputs
  Put(infer_options, ge::ir_option::INPUT_FORMAT, o.input_format);
  std::string input_shape = o.input_shape;
  const bool dynamic = !o.dynamic_batch_size.empty() || !o.dynamic_image_size.empty() || !o.dynamic_dims.empty();
  if (dynamic && input_shape.empty()) {
    input_shape = bundle_builder::DeriveInputShape(inputs, o);
  }
  Put(infer_options, ge::ir_option::INPUT_SHAPE, input_shape);
  Put(infer_options, ge::ir_option::DYNAMIC_BATCH_SIZE, o.dynamic_batch_size);
  Put(infer_options, ge::ir_option::DYNAMIC_IMAGE_SIZE, o.dynamic_image_size);
  Put(infer_options, ge::ir_option::DYNAMIC_DIMS, o.dynamic_dims);

  std::vector<ge::GraphWithOptions> bundle;
  std::vector<std::string> roles;
  bundle.push_back(ge::GraphWithOptions{graphs.infer_graph, infer_options});
  roles.emplace_back("infer");
  if (o.init) {
    bundle.push_back(ge::GraphWithOptions{graphs.var_init_graph, {}});
    roles.emplace_back("init");
  }
  bundle.push_back(ge::GraphWithOptions{graphs.var_update_graph, {}});
  roles.emplace_back("update");
  ge::ModelBufferData model;
  Check(ge::aclgrphBundleBuildModel(bundle, model), "aclgrphBundleBuildModel");

  const std::string stem = o.output.substr(0, o.output.size() - 3);  // GE appends ".om" (ge_ir_build.cc:1557)
  Check(ge::aclgrphBundleSaveModel(stem.c_str(), model), "aclgrphBundleSaveModel(" + o.output + ")");

  std::vector<bundle_builder::DataInput> manifest_inputs = inputs;
  if (!o.dynamic_batch_size.empty()) {
    for (auto &in : manifest_inputs) {
      if (!in.shape.empty()) {
        in.shape[0] = -1;
      }
    }
  }
  bundle_builder::ManifestInfo info{roles, manifest_inputs, variables,
                                    o.precision_mode.empty() ? kDefaultPrecisionMode : o.precision_mode};
  bundle_builder::WriteFileAtomic(o.manifest, bundle_builder::ManifestJson(info, o));
  uint64_t var_bytes = 0;
  for (const auto &v : variables) {
    var_bytes += v.nbytes;
  }
  std::cout << "wrote " << o.output << ": bundle model, graphs";
  for (size_t i = 0; i < roles.size(); ++i) {
    std::cout << (i ? "/" : " ") << roles[i];
  }
  std::cout << ", soc " << o.soc_version << ", precision_mode " << info.precision_mode << "\n  " << variables.size()
            << " variables, " << var_bytes << " bytes\nwrote " << o.manifest << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  Options options;
  try {
    options = bundle_builder::ParseOptions(argc, argv);
  } catch (const bundle_builder::UsageError &e) {
    if (e.message.empty()) {
      std::cout << bundle_builder::Usage();
      return 0;
    }
    std::cerr << kProg << ": error: " << e.message << "\n" << bundle_builder::Usage();
    return 2;
  } catch (const std::exception &e) {
    std::cerr << kProg << ": error: bad command line (" << e.what() << ")\n" << bundle_builder::Usage();
    return 2;
  }
  try {
    return Run(options);
  } catch (const std::exception &e) {
    std::cerr << kProg << ": error: " << e.what() << std::endl;
    return 1;
  }
}
