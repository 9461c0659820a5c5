// Which constants become variables, and what the parsed graph's data inputs are.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "model_order.h"
#include "options.h"

namespace bundle_builder {

struct Variable {
  std::string name;      // the manifest's name: ONNX initializer, TF "node:0" (as the simulator builder)
  std::string ge_const;  // the Const node GE's parser made, passed to aclgrphConvertToWeightRefreshableGraphs
  std::string dtype;     // numpy dtype name
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  std::string sha256;    // of the initial value (C-order bytes); empty when the Const has no readable value
};

struct DataInput {
  std::string name;  // ONNX input name; TF "placeholder:0"
  std::string node;  // the Data node's name (ATC --input_shape takes it)
  std::string dtype;
  std::vector<int64_t> shape;  // -1 dynamic, as GE's parser set it
  int64_t index = 0;
};

// The default rule is the simulator builder's (acl_bundle/sim/builder.py, tf_builder.py): every
// float16/float32/float64 initializer (ONNX), every float Const read only through Identity nodes, i.e. every
// frozen variable (TF); in the model file's order.  An explicit list keeps its order.  Throws
// std::runtime_error naming the constant and the reason.
std::vector<Variable> ChooseVariables(const ge::Graph &graph, const Options &options,
                                      const std::vector<FileTensor> &file_order);

std::vector<DataInput> DataInputs(const ge::Graph &graph, const Options &options);

// ATC --input_shape for the dynamic-shape options when the user gave none: every data input's parsed shape,
// dim 0 as -1 under --dynamic-batch-size.
std::string DeriveInputShape(const std::vector<DataInput> &inputs, const Options &options);

// numpy name of a GE data type, "" if numpy has none (bfloat16, complex, ...).
std::string NumpyDtype(ge::DataType dtype);

}  // namespace bundle_builder
