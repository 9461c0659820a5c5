#include "variables.h"

#include <algorithm>
#include <map>
#include <stdexcept>

#include "sha256.h"

namespace bundle_builder {
namespace {

const char *const kConst = "Const";         // ge::CONSTANT (hicann/ge base/common/types.cc:167)
const char *const kData = "Data";
const char *const kIdentity = "Identity";
const char *const kWeightAttr = "value";    // ATTR_NAME_WEIGHTS: the Const's tensor
const char *const kIndexAttr = "index";     // a Data node's input index
const char *const kInitializerKey = "_Initializer_";  // hicann/ge parser/parser/onnx/onnx_parser.cc:54, :365

std::string Str(const ge::AscendString &s) { return s.GetString() == nullptr ? "" : s.GetString(); }

std::string NodeName(const ge::GNode &n) {
  ge::AscendString s;
  return n.GetName(s) == ge::GRAPH_SUCCESS ? Str(s) : "";
}

std::string NodeType(const ge::GNode &n) {
  ge::AscendString s;
  return n.GetType(s) == ge::GRAPH_SUCCESS ? Str(s) : "";
}

// "w_Initializer_3" -> "w"; "" when the name is not an initializer Const's.
std::string InitializerOf(const std::string &node) {
  const auto pos = node.rfind(kInitializerKey);
  if (pos == std::string::npos || pos == 0) {
    return "";
  }
  const std::string index = node.substr(pos + std::string(kInitializerKey).size());
  if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos) {
    return "";
  }
  return node.substr(0, pos);
}

bool IsFloat(ge::DataType t) { return t == ge::DT_FLOAT || t == ge::DT_FLOAT16 || t == ge::DT_DOUBLE; }

std::string Shape(const std::vector<int64_t> &dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    s += (i ? "," : "") + std::to_string(dims[i]);
  }
  return s + "]";
}

Variable Describe(const ge::GNode &node, const std::string &name) {
  Variable v;
  v.name = name;
  v.ge_const = NodeName(node);
  ge::Tensor value;
  ge::TensorDesc desc;
  const bool has_value = node.GetAttr(ge::AscendString(kWeightAttr), value) == ge::GRAPH_SUCCESS;
  if (has_value) {
    desc = value.GetTensorDesc();
  } else if (node.GetOutputDesc(0, desc) != ge::GRAPH_SUCCESS) {
    throw std::runtime_error("variable " + name + ": GE's Const node " + v.ge_const + " has no tensor description");
  }
  v.dtype = NumpyDtype(desc.GetDataType());
  if (v.dtype.empty()) {
    throw std::runtime_error("variable " + name + " has GE data type " + std::to_string(desc.GetDataType()) +
                             ", which the runtime cannot move to and from numpy");
  }
  v.shape = desc.GetShape().GetDims();
  uint64_t n = ge::GetSizeByDataType(desc.GetDataType());
  for (int64_t d : v.shape) {
    if (d < 0) {
      throw std::runtime_error("variable " + name + " has a dynamic shape " + Shape(v.shape));
    }
    n *= static_cast<uint64_t>(d);
  }
  v.nbytes = n;
  if (has_value && value.GetData() != nullptr && value.GetSize() == n) {
    v.sha256 = Sha256Hex(value.GetData(), value.GetSize());
  }
  return v;
}

// The ops reading output 0 of each node of the GraphDef itself (GE's parser may drop or fuse Identity nodes, so the
// rule is decided on the file, as the simulator's tf_builder decides it on the GraphDef).
std::map<std::string, std::vector<std::string>> Readers(const std::vector<FileTensor> &nodes) {
  std::map<std::string, std::vector<std::string>> readers;
  for (const auto &n : nodes) {
    for (const auto &in : n.inputs) {
      if (in.empty() || in[0] == '^') {
        continue;  // a control edge reads no value
      }
      const auto colon = in.find(':');
      if (colon == std::string::npos || in.compare(colon, std::string::npos, ":0") == 0) {
        readers[in.substr(0, colon)].push_back(n.op);
      }
    }
  }
  return readers;
}

}  // namespace

std::string NumpyDtype(ge::DataType dtype) {
  static const std::map<ge::DataType, std::string> names = {
      {ge::DT_FLOAT, "float32"}, {ge::DT_FLOAT16, "float16"}, {ge::DT_DOUBLE, "float64"},
      {ge::DT_INT8, "int8"},     {ge::DT_INT16, "int16"},     {ge::DT_INT32, "int32"},
      {ge::DT_INT64, "int64"},   {ge::DT_UINT8, "uint8"},     {ge::DT_UINT16, "uint16"},
      {ge::DT_UINT32, "uint32"}, {ge::DT_UINT64, "uint64"},   {ge::DT_BOOL, "bool"}};
  const auto it = names.find(dtype);
  return it == names.end() ? "" : it->second;
}

std::vector<Variable> ChooseVariables(const ge::Graph &graph, const Options &options,
                                      const std::vector<FileTensor> &file_order) {
  const bool onnx = options.framework == "onnx";
  std::map<std::string, ge::GNode> consts;  // the user's name (initializer / TF node) -> GE Const node
  for (const auto &node : graph.GetDirectNode()) {
    if (NodeType(node) != kConst) {
      continue;
    }
    const std::string key = onnx ? InitializerOf(NodeName(node)) : NodeName(node);
    if (!key.empty()) {
      consts.emplace(key, node);
    }
  }
  std::vector<Variable> out;
  if (options.variables_given) {
    if (options.variables.empty()) {
      throw std::runtime_error("--variables is empty; a bundle needs at least one variable");
    }
    for (const auto &requested : options.variables) {
      std::string key = requested;
      if (!onnx && key.size() > 2 && key.compare(key.size() - 2, 2, ":0") == 0) {
        key = key.substr(0, key.size() - 2);
      }
      const auto it = consts.find(key);
      if (it == consts.end()) {
        throw std::runtime_error("variable " + requested + " cannot stay updatable: GE's parser made no Const node of it (" +
                                 std::string(onnx ? "not an initializer of the graph" : "not a constant of the frozen graph") + ")");
      }
      out.push_back(Describe(it->second, onnx ? key : key + ":0"));
    }
    return out;
  }
  const auto readers = onnx ? std::map<std::string, std::vector<std::string>>{} : Readers(file_order);
  for (const auto &t : file_order) {
    if (onnx) {
      if (t.onnx_type != 1 && t.onnx_type != 10 && t.onnx_type != 11) {  // FLOAT, FLOAT16, DOUBLE
        continue;
      }
      const auto it = consts.find(t.name);
      if (it == consts.end()) {
        throw std::runtime_error("initializer " + t.name + " has no Const node in the graph GE's parser made; "
                                 "name the variables with --variables");
      }
      out.push_back(Describe(it->second, t.name));
    } else {
      if (t.op != kConst) {
        continue;
      }
      const auto it = consts.find(t.name);
      if (it == consts.end()) {
        continue;  // pruned by the parser: it feeds none of the outputs
      }
      // a frozen variable: a float Const read only through Identity nodes (tf_builder.py's rule)
      const auto r = readers.find(t.name);
      const bool only_identity = r != readers.end() && std::all_of(r->second.begin(), r->second.end(),
                                                                   [](const std::string &op) { return op == kIdentity; });
      ge::Tensor value;
      if (!only_identity || it->second.GetAttr(ge::AscendString(kWeightAttr), value) != ge::GRAPH_SUCCESS ||
          !IsFloat(value.GetTensorDesc().GetDataType())) {
        continue;
      }
      out.push_back(Describe(it->second, t.name + ":0"));
    }
  }
  if (out.empty()) {
    throw std::runtime_error(onnx ? "the model has no float16/float32/float64 initializer to make a variable"
                                  : "the graph has no frozen variable (a float Const read through an Identity); "
                                    "name the constants to make updatable with --variables");
  }
  return out;
}

std::vector<DataInput> DataInputs(const ge::Graph &graph, const Options &options) {
  std::vector<DataInput> out;
  for (const auto &node : graph.GetDirectNode()) {
    if (NodeType(node) != kData) {
      continue;
    }
    DataInput in;
    in.node = NodeName(node);
    in.name = options.framework == "onnx" ? in.node : in.node + ":0";
    int64_t index = static_cast<int64_t>(out.size());
    (void)node.GetAttr(ge::AscendString(kIndexAttr), index);
    in.index = index;
    ge::TensorDesc desc;
    if (node.GetOutputDesc(0, desc) == ge::GRAPH_SUCCESS) {
      in.dtype = NumpyDtype(desc.GetDataType());
      in.shape = desc.GetShape().GetDims();
    }
    out.push_back(in);
  }
  std::sort(out.begin(), out.end(), [](const DataInput &a, const DataInput &b) { return a.index < b.index; });
  return out;
}

std::string DeriveInputShape(const std::vector<DataInput> &inputs, const Options &options) {
  const bool batch = !options.dynamic_batch_size.empty();
  std::string out;
  for (const auto &in : inputs) {
    if (in.shape.size() == 1 && in.shape[0] == -2) {  // UNKNOWN_DIM_NUM: unknown rank
      throw std::runtime_error("input " + in.name + " has unknown rank; give its shape with --input-shape");
    }
    if (batch && in.shape.empty()) {
      throw std::runtime_error("input " + in.name + " is a scalar, so it has no batch dim (dim 0)");
    }
    std::vector<int64_t> dims = in.shape;
    if (batch) {
      dims[0] = -1;
    }
    std::string s;
    for (size_t i = 0; i < dims.size(); ++i) {
      s += (i ? "," : "") + std::to_string(dims[i]);
    }
    out += (out.empty() ? "" : ";") + in.node + ":" + s;
  }
  return out;
}

}  // namespace bundle_builder
