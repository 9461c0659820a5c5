// The order of the updatable constants in the model file itself, read from the protobuf wire format.
//
// GE's parsers do not keep it: the ONNX parser creates the initializers' Const nodes in std::map (name)
// order (hicann/ge parser/parser/onnx/onnx_parser.cc:359-379).  The simulator builder orders variables as the
// file does (ONNX graph.initializer order, GraphDef node order), so reading the order here gives both
// targets the same update-graph input order for the same model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bundle_builder {

struct FileTensor {
  std::string name;
  int32_t onnx_type = 0;  // ONNX TensorProto.DataType (ONNX); 0 for TF
  std::string op;         // NodeDef.op (TF); empty for ONNX
  std::vector<std::string> inputs;  // NodeDef.input (TF): "node", "node:1", "^control"
};

// Top-level graph initializers of an ONNX ModelProto, in file order.
std::vector<FileTensor> OnnxInitializers(const std::string &bytes);
// Nodes of a TF GraphDef, in file order, with their inputs.
std::vector<FileTensor> GraphDefNodes(const std::string &bytes);
// Read a whole file (at most 2 GiB - 1, protobuf's limit); throws std::runtime_error.
std::string ReadModelFile(const std::string &path);

}  // namespace bundle_builder
