// A stand-in for the CANN libraries the native builder links (graph, ge_compiler, ge_runner, fmk_onnx_parser):
// just the GE / metadef symbols acl_bundle_builder uses, defined against the real headers, so the whole tool can
// be linked and run without CANN (tests/native/test_bundle_builder.py).  It is not GE:
//
// * aclgrphParseONNX reads the ONNX file and builds the graph GE's ONNX parser builds for it as far as the
//   builder looks: one Const per initializer, named "<initializer>_Initializer_<i>" in std::map (name) order
//   with the tensor as its "value" (hicann/ge parser/parser/onnx/onnx_parser.cc:359-379), one Data per graph
//   input that is not an initializer, with attribute "index" and -1 for symbolic dims (:293-356);
// * aclgrphParseTensorFlow keeps the GraphDef's node names, Placeholders as Data nodes;
// * aclgrphConvertToWeightRefreshableGraphs refuses a name that is no Const (ge_ir_build.cc:1497-1505);
// * aclgrphBundleBuildModel refuses fewer than two graphs (:1434-1437) and empty option values (:1452-1454);
// * aclgrphBundleSaveModel writes "<name>.om" (:1557) holding a JSON log of every call the builder made.
// FAKE_GE_FAIL=<function name> makes that call fail with GRAPH_FAILED and an E19999 message.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "ge/ge_api.h"
#include "ge/ge_ir_build.h"
#include "graph/graph.h"
#include "parser/onnx_parser.h"
#include "parser/tensorflow_parser.h"

namespace ge {

class ShapeImpl {
 public:
  std::vector<int64_t> dims;
};
class TensorDescImpl {
 public:
  Shape shape;
  DataType dtype = DT_FLOAT;
};
class TensorImpl {
 public:
  TensorDesc desc;
  std::vector<uint8_t> data;
};
class NodeImpl {
 public:
  std::string name, type;
  bool has_value = false;
  Tensor value;
  TensorDesc out;
  int64_t index = -1;
};
class GraphImpl {
 public:
  std::string name;
  std::vector<GNode> nodes;
};
// The headers' friends of GNode, Graph and Tensor: the fake's way to their impl pointers.
class NodeAdapter {
 public:
  static NodeImpl &Of(const GNode &n) { return *n.impl_; }
};
class GraphUtilsEx {
 public:
  static GraphImpl &Of(const Graph &g) { return *g.impl_; }
};
class TensorAdapter {
 public:
  static TensorImpl &Of(const Tensor &t) { return *t.impl; }
};

}  // namespace ge

namespace {

struct Log {
  std::map<std::string, std::string> global;
  std::vector<std::string> const_names;
  std::string parse;
  std::string error;
};
Log &TheLog() {
  static Log log;
  return log;
}

std::string Esc(const std::string &s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
    }
    o += c;
  }
  return o;
}

ge::graphStatus Injected(const char *call) {
  const char *fail = std::getenv("FAKE_GE_FAIL");
  if (fail != nullptr && std::strcmp(fail, call) == 0) {
    TheLog().error = std::string("E19999: Inner Error! injected failure of ") + call + "\n        [fake GE]";
    return ge::GRAPH_FAILED;
  }
  return ge::GRAPH_SUCCESS;
}

std::string Options(const std::map<ge::AscendString, ge::AscendString> &m) {
  std::string o = "{";
  for (const auto &kv : m) {
    o += (o.size() > 1 ? ", " : "") + std::string("\"") + Esc(kv.first.GetString()) + "\": \"" +
         Esc(kv.second.GetString()) + "\"";
  }
  return o + "}";
}

// ---- a minimal protobuf reader (test code: trusts its input a little more than the builder does)
struct R {
  const uint8_t *p, *e;
  uint64_t V() {
    uint64_t v = 0;
    for (int s = 0; p < e; s += 7) {
      uint8_t b = *p++;
      v |= uint64_t(b & 0x7f) << s;
      if (!(b & 0x80)) break;
    }
    return v;
  }
  R B() {
    uint64_t n = V();
    R r{p, p + n};
    p += n;
    return r;
  }
  void Skip(int w) {
    if (w == 0) V();
    else if (w == 1) p += 8;
    else if (w == 2) B();
    else if (w == 5) p += 4;
  }
  template <class F> void Each(F f) {
    while (p < e) {
      uint64_t k = V();
      if (!f(int(k >> 3), int(k & 7), *this)) Skip(int(k & 7));
    }
  }
  std::string S() { R r = B(); return std::string((const char *)r.p, r.e - r.p); }
};

ge::DataType FromOnnx(int t) {
  switch (t) {
    case 1: return ge::DT_FLOAT;
    case 2: return ge::DT_UINT8;
    case 3: return ge::DT_INT8;
    case 6: return ge::DT_INT32;
    case 7: return ge::DT_INT64;
    case 9: return ge::DT_BOOL;
    case 10: return ge::DT_FLOAT16;
    case 11: return ge::DT_DOUBLE;
    default: return ge::DT_UNDEFINED;
  }
}

ge::GNode MakeNode(const std::string &name, const std::string &type);

}  // namespace

namespace ge {

AscendString::AscendString(const char_t *const name) : name_(std::make_shared<std::string>(name ? name : "")) {}
const char_t *AscendString::GetString() const { return name_ ? name_->c_str() : ""; }
bool AscendString::operator<(const AscendString &d) const { return std::string(GetString()) < d.GetString(); }

Shape::Shape() : impl_(std::make_shared<ShapeImpl>()) {}
Shape::Shape(const std::vector<int64_t> &dims) : impl_(std::make_shared<ShapeImpl>()) { impl_->dims = dims; }
std::vector<int64_t> Shape::GetDims() const { return impl_ ? impl_->dims : std::vector<int64_t>{}; }

TensorDesc::TensorDesc() : impl(std::make_shared<TensorDescImpl>()) {}
TensorDesc::TensorDesc(Shape shape, Format, DataType dt) : impl(std::make_shared<TensorDescImpl>()) {
  impl->shape = shape;
  impl->dtype = dt;
}
TensorDesc::TensorDesc(const TensorDesc &desc) : impl(std::make_shared<TensorDescImpl>(*desc.impl)) {}
TensorDesc::TensorDesc(TensorDesc &&desc) : impl(std::move(desc.impl)) {}
TensorDesc &TensorDesc::operator=(const TensorDesc &desc) {
  impl = std::make_shared<TensorDescImpl>(*desc.impl);
  return *this;
}
TensorDesc &TensorDesc::operator=(TensorDesc &&desc) {
  impl = std::move(desc.impl);
  return *this;
}
Shape TensorDesc::GetShape() const { return impl->shape; }
DataType TensorDesc::GetDataType() const { return impl->dtype; }

Tensor::Tensor() : impl(std::make_shared<TensorImpl>()) {}
TensorDesc Tensor::GetTensorDesc() const { return impl->desc; }
const uint8_t *Tensor::GetData() const { return impl->data.empty() ? nullptr : impl->data.data(); }
uint8_t *Tensor::GetData() { return impl->data.empty() ? nullptr : impl->data.data(); }
size_t Tensor::GetSize() const { return impl->data.size(); }

GNode::GNode() : impl_(std::make_shared<NodeImpl>()) {}
graphStatus GNode::GetType(AscendString &type) const {
  type = AscendString(impl_->type.c_str());
  return GRAPH_SUCCESS;
}
graphStatus GNode::GetName(AscendString &name) const {
  name = AscendString(impl_->name.c_str());
  return GRAPH_SUCCESS;
}
graphStatus GNode::GetAttr(const AscendString &name, Tensor &attr_value) const {
  if (std::string(name.GetString()) != "value" || !impl_->has_value) return GRAPH_FAILED;
  attr_value = impl_->value;
  return GRAPH_SUCCESS;
}
graphStatus GNode::GetAttr(const AscendString &name, int64_t &attr_value) const {
  if (std::string(name.GetString()) != "index" || impl_->index < 0) return GRAPH_FAILED;
  attr_value = impl_->index;
  return GRAPH_SUCCESS;
}
graphStatus GNode::GetOutputDesc(const int32_t index, TensorDesc &tensor_desc) const {
  if (index != 0) return GRAPH_FAILED;
  tensor_desc = impl_->out;
  return GRAPH_SUCCESS;
}
Graph::Graph(const char_t *name) : impl_(std::make_shared<GraphImpl>()) { impl_->name = name; }
std::vector<GNode> Graph::GetDirectNode() const { return impl_ ? impl_->nodes : std::vector<GNode>{}; }

StatusFactory *StatusFactory::Instance() {  // ge_api_error_codes.h registers GE's codes at start-up
  static StatusFactory factory;
  return &factory;
}

AscendString GEGetErrorMsgV2() { return AscendString(TheLog().error.c_str()); }

graphStatus aclgrphParseONNX(const char *model_file, const std::map<AscendString, AscendString> &parser_params,
                             Graph &graph) {
  if (Injected("aclgrphParseONNX") != GRAPH_SUCCESS) return GRAPH_FAILED;
  std::ifstream in(model_file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::map<std::string, Tensor> inits;
  std::vector<std::pair<std::string, TensorDesc>> inputs;
  R model{(const uint8_t *)bytes.data(), (const uint8_t *)bytes.data() + bytes.size()};
  model.Each([&](int f, int w, R &m) {
    if (f != 7 || w != 2) return false;
    m.B().Each([&](int gf, int gw, R &g) {
      if (gf == 5 && gw == 2) {
        std::string name;
        int dt = 0;
        std::vector<int64_t> dims;
        std::vector<uint8_t> raw;
        g.B().Each([&](int tf, int tw, R &t) {
          if (tf == 8) name = t.S();
          else if (tf == 2) dt = int(t.V());
          else if (tf == 1 && tw == 0) dims.push_back(int64_t(t.V()));
          else if (tf == 1 && tw == 2) { R p = t.B(); while (p.p < p.e) dims.push_back(int64_t(p.V())); }
          else if (tf == 9) { std::string s = t.S(); raw.assign(s.begin(), s.end()); }
          else return false;
          return true;
        });
        Tensor v;
        TensorAdapter::Of(v).desc = TensorDesc(Shape(dims), FORMAT_ND, FromOnnx(dt));
        TensorAdapter::Of(v).data = raw;
        inits[name] = v;
        return true;
      }
      if (gf == 11 && gw == 2) {
        std::string name;
        int et = 0;
        std::vector<int64_t> dims;
        g.B().Each([&](int vf, int, R &vi) {
          if (vf == 1) { name = vi.S(); return true; }
          if (vf != 2) return false;
          vi.B().Each([&](int yf, int, R &ty) {
            if (yf != 1) return false;
            ty.B().Each([&](int sf, int, R &tt) {
              if (sf == 1) { et = int(tt.V()); return true; }
              if (sf != 2) return false;
              tt.B().Each([&](int df, int, R &sh) {
                if (df != 1) return false;
                int64_t d = -1;
                sh.B().Each([&](int xf, int xw, R &dim) {
                  if (xf == 1 && xw == 0) { d = int64_t(dim.V()); return true; }
                  return false;
                });
                dims.push_back(d);
                return true;
              });
              return true;
            });
            return true;
          });
          return true;
        });
        inputs.emplace_back(name, TensorDesc(Shape(dims), FORMAT_ND, FromOnnx(et)));
        return true;
      }
      return false;
    });
    return true;
  });
  graph = Graph("parsed");
  int index = 0;
  for (const auto &kv : inits) {  // std::map: name order, as GE's parser
    GNode n = MakeNode(kv.first + "_Initializer_" + std::to_string(index++), "Const");
    NodeAdapter::Of(n).has_value = true;
    NodeAdapter::Of(n).value = kv.second;
    NodeAdapter::Of(n).out = kv.second.GetTensorDesc();
    GraphUtilsEx::Of(graph).nodes.push_back(n);
  }
  int64_t data_index = 0;
  for (const auto &in : inputs) {
    if (inits.count(in.first)) continue;
    GNode n = MakeNode(in.first, "Data");
    NodeAdapter::Of(n).index = data_index++;
    NodeAdapter::Of(n).out = in.second;
    GraphUtilsEx::Of(graph).nodes.push_back(n);
  }
  TheLog().parse = std::string("aclgrphParseONNX ") + Options(parser_params);
  return GRAPH_SUCCESS;
}

// GE's TensorFlow parser as far as the builder looks: one node per NodeDef, same name; Const keeps its tensor,
// Placeholder becomes Data (attribute index in file order, shape from its attr or the input_shape option).
graphStatus aclgrphParseTensorFlow(const char *model_file, const std::map<AscendString, AscendString> &parser_params,
                                   Graph &graph) {
  if (Injected("aclgrphParseTensorFlow") != GRAPH_SUCCESS) return GRAPH_FAILED;
  std::map<std::string, std::vector<int64_t>> shapes;  // input_shape "x:1,8;y:-1,4"
  for (const auto &kv : parser_params) {
    if (std::string(kv.first.GetString()) != "input_shape") continue;
    std::stringstream all(kv.second.GetString());
    std::string item;
    while (std::getline(all, item, ';')) {
      const auto colon = item.rfind(':');
      std::vector<int64_t> dims;
      std::stringstream ds(item.substr(colon + 1));
      std::string d;
      while (std::getline(ds, d, ',')) dims.push_back(std::stoll(d));
      shapes[item.substr(0, colon)] = dims;
    }
  }
  std::ifstream in(model_file, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  graph = Graph("parsed");
  std::map<std::string, GNode> by_name;
  int64_t data_index = 0;
  R gd{(const uint8_t *)bytes.data(), (const uint8_t *)bytes.data() + bytes.size()};
  gd.Each([&](int f, int w, R &g) {
    if (f != 1 || w != 2) return false;
    std::string name, op;
    int dtype = 0;
    std::vector<int64_t> dims;
    std::vector<uint8_t> content;
    g.B().Each([&](int nf, int, R &n) {
      if (nf == 1) name = n.S();
      else if (nf == 2) op = n.S();
      else if (nf == 5) {
        std::string key;
        n.B().Each([&](int ef, int, R &e) {
          if (ef == 1) { key = e.S(); return true; }
          if (ef != 2) return false;
          e.B().Each([&](int af, int aw, R &a) {
            if (af == 6 && aw == 0 && key == "dtype") { dtype = int(a.V()); return true; }
            if (af == 7 && key == "shape") {
              a.B().Each([&](int sf, int, R &sh) {
                if (sf != 2) return false;
                int64_t size = -1;
                sh.B().Each([&](int df, int, R &d) { if (df == 1) { size = int64_t(d.V()); return true; } return false; });
                dims.push_back(size);
                return true;
              });
              return true;
            }
            if (af == 8 && key == "value") {
              a.B().Each([&](int tf, int, R &t) {
                if (tf == 1) { dtype = int(t.V()); return true; }
                if (tf == 4) { std::string c = t.S(); content.assign(c.begin(), c.end()); return true; }
                if (tf != 2) return false;
                t.B().Each([&](int sf, int, R &sh) {
                  if (sf != 2) return false;
                  int64_t size = -1;
                  sh.B().Each([&](int df, int, R &d) { if (df == 1) { size = int64_t(d.V()); return true; } return false; });
                  dims.push_back(size);
                  return true;
                });
                return true;
              });
              return true;
            }
            return false;
          });
          return true;
        });
      } else return false;
      return true;
    });
    // TF DataType -> GE: DT_FLOAT 1, DT_DOUBLE 2, DT_INT32 3, DT_INT64 9, DT_BOOL 10, DT_HALF 19
    const DataType t = dtype == 1 ? DT_FLOAT : dtype == 2 ? DT_DOUBLE : dtype == 3 ? DT_INT32 : dtype == 9 ? DT_INT64
                     : dtype == 10 ? DT_BOOL : dtype == 19 ? DT_FLOAT16 : DT_UNDEFINED;
    const bool placeholder = op == "Placeholder";
    GNode node = MakeNode(name, placeholder ? "Data" : op);
    NodeImpl &impl = NodeAdapter::Of(node);
    if (op == "Const") {
      impl.has_value = true;
      TensorAdapter::Of(impl.value).desc = TensorDesc(Shape(dims), FORMAT_ND, t);
      TensorAdapter::Of(impl.value).data = content;
      impl.out = impl.value.GetTensorDesc();
    } else if (placeholder) {
      impl.index = data_index++;
      impl.out = TensorDesc(Shape(shapes.count(name) ? shapes[name] : dims), FORMAT_ND, t);
    }
    by_name[name] = node;
    GraphUtilsEx::Of(graph).nodes.push_back(node);
    return true;
  });
  TheLog().parse = std::string("aclgrphParseTensorFlow ") + Options(parser_params);
  return GRAPH_SUCCESS;
}

graphStatus aclgrphBuildInitialize(std::map<AscendString, AscendString> &global_options) {
  if (Injected("aclgrphBuildInitialize") != GRAPH_SUCCESS) return GRAPH_FAILED;
  for (const auto &kv : global_options) TheLog().global[kv.first.GetString()] = kv.second.GetString();
  return GRAPH_SUCCESS;
}

void aclgrphBuildFinalize() { TheLog().global["finalized"] = "yes"; }

graphStatus aclgrphConvertToWeightRefreshableGraphs(const Graph &origin_graph, const std::vector<AscendString> &const_names,
                                                    WeightRefreshableGraphs &graphs) {
  if (Injected("aclgrphConvertToWeightRefreshableGraphs") != GRAPH_SUCCESS) return GRAPH_FAILED;
  for (const auto &c : const_names) {
    const auto nodes = origin_graph.GetDirectNode();
    const bool found = std::any_of(nodes.begin(), nodes.end(), [&](const GNode &n) {
      return NodeAdapter::Of(n).type == "Const" && NodeAdapter::Of(n).name == c.GetString();
    });
    if (!found) {
      TheLog().error = std::string("cannot find const name ") + c.GetString() + " in graph";
      return GRAPH_PARAM_INVALID;
    }
    TheLog().const_names.push_back(c.GetString());
  }
  graphs.infer_graph = Graph("var_infer_graph");
  graphs.var_init_graph = Graph("var_init_graph");
  graphs.var_update_graph = Graph("var_update_graph");
  return GRAPH_SUCCESS;
}

graphStatus aclgrphBundleBuildModel(const std::vector<GraphWithOptions> &graph_with_options, ModelBufferData &model) {
  if (Injected("aclgrphBundleBuildModel") != GRAPH_SUCCESS) return GRAPH_FAILED;
  if (graph_with_options.size() <= 1U) return GRAPH_PARAM_INVALID;
  std::ostringstream o;
  o << "{\"parse\": \"" << Esc(TheLog().parse) << "\", \"global\": {";
  bool first = true;
  for (const auto &kv : TheLog().global) {
    o << (first ? "" : ", ") << "\"" << Esc(kv.first) << "\": \"" << Esc(kv.second) << "\"";
    first = false;
  }
  o << "}, \"const_names\": [";
  for (size_t i = 0; i < TheLog().const_names.size(); ++i) o << (i ? ", " : "") << "\"" << Esc(TheLog().const_names[i]) << "\"";
  o << "], \"graphs\": [";
  for (size_t i = 0; i < graph_with_options.size(); ++i) {
    for (const auto &kv : graph_with_options[i].build_options) {
      if (std::string(kv.second.GetString()).empty()) return GRAPH_PARAM_INVALID;
    }
    o << (i ? ", " : "") << "{\"name\": \"" << GraphUtilsEx::Of(graph_with_options[i].graph).name
      << "\", \"options\": " << Options(graph_with_options[i].build_options) << "}";
  }
  o << "]}";
  const std::string text = o.str();
  model.data.reset(new uint8_t[text.size()], std::default_delete<uint8_t[]>());
  std::memcpy(model.data.get(), text.data(), text.size());
  model.length = text.size();
  return GRAPH_SUCCESS;
}

graphStatus aclgrphBundleSaveModel(const char_t *output_file, const ModelBufferData &model) {
  if (Injected("aclgrphBundleSaveModel") != GRAPH_SUCCESS) return GRAPH_FAILED;
  std::ofstream out(std::string(output_file) + ".om", std::ios::binary);
  out.write(reinterpret_cast<const char *>(model.data.get()), static_cast<std::streamsize>(model.length));
  return out ? GRAPH_SUCCESS : GRAPH_FAILED;
}

}  // namespace ge

namespace {
ge::GNode MakeNode(const std::string &name, const std::string &type) {
  ge::GNode n;
  ge::NodeAdapter::Of(n).name = name;
  ge::NodeAdapter::Of(n).type = type;
  return n;
}
}  // namespace
