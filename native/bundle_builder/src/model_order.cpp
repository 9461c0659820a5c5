#include "model_order.h"

#include <fstream>
#include <functional>
#include <stdexcept>

namespace bundle_builder {
namespace {

constexpr uint64_t kMaxProtoBytes = (uint64_t{2} << 30) - 1;  // protobuf rejects messages of 2 GiB or more

struct Reader {
  const uint8_t *p;
  const uint8_t *end;

  bool Done() const { return p >= end; }

  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) {
        throw std::runtime_error("truncated varint");
      }
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        return v;
      }
    }
    throw std::runtime_error("varint longer than 10 bytes");
  }

  Reader Bytes() {
    const uint64_t n = Varint();
    if (n > static_cast<uint64_t>(end - p)) {
      throw std::runtime_error("length-delimited field runs past the end");
    }
    Reader sub{p, p + n};
    p += n;
    return sub;
  }

  void Skip(uint32_t wire_type) {
    switch (wire_type) {
      case 0: Varint(); return;
      case 1: Advance(8); return;
      case 2: Bytes(); return;
      case 5: Advance(4); return;
      default: throw std::runtime_error("unsupported wire type " + std::to_string(wire_type));
    }
  }

  void Advance(uint64_t n) {
    if (n > static_cast<uint64_t>(end - p)) {
      throw std::runtime_error("fixed-size field runs past the end");
    }
    p += n;
  }

  // Call fn(field, wire_type, reader) for each field; fn consumes the value or returns false to skip it.
  void Fields(const std::function<bool(uint32_t, uint32_t, Reader &)> &fn) {
    while (!Done()) {
      const uint64_t key = Varint();
      const auto field = static_cast<uint32_t>(key >> 3);
      const auto wire = static_cast<uint32_t>(key & 7);
      if (!fn(field, wire, *this)) {
        Skip(wire);
      }
    }
  }
};

std::string AsString(Reader r) { return std::string(reinterpret_cast<const char *>(r.p), r.end - r.p); }

Reader Whole(const std::string &bytes) {
  const auto *b = reinterpret_cast<const uint8_t *>(bytes.data());
  return Reader{b, b + bytes.size()};
}

}  // namespace

std::string ReadModelFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    throw std::runtime_error("cannot open " + path);
  }
  const auto size = static_cast<uint64_t>(in.tellg());
  if (size > kMaxProtoBytes) {
    throw std::runtime_error(path + " is " + std::to_string(size) + " bytes; a protobuf model must be under 2 GiB");
  }
  std::string bytes(size, '\0');
  in.seekg(0);
  if (!in.read(&bytes[0], static_cast<std::streamsize>(size))) {
    throw std::runtime_error("cannot read " + path);
  }
  return bytes;
}

std::vector<FileTensor> OnnxInitializers(const std::string &bytes) {
  // ModelProto.graph = 7; GraphProto.initializer = 5; TensorProto.data_type = 2, .name = 8 (onnx/onnx.proto)
  std::vector<FileTensor> out;
  Whole(bytes).Fields([&](uint32_t field, uint32_t wire, Reader &model) {
    if (field != 7 || wire != 2) {
      return false;
    }
    model.Bytes().Fields([&](uint32_t gfield, uint32_t gwire, Reader &graph) {
      if (gfield != 5 || gwire != 2) {
        return false;
      }
      FileTensor t;
      graph.Bytes().Fields([&](uint32_t tfield, uint32_t twire, Reader &tensor) {
        if (tfield == 8 && twire == 2) {
          t.name = AsString(tensor.Bytes());
          return true;
        }
        if (tfield == 2 && twire == 0) {
          t.onnx_type = static_cast<int32_t>(tensor.Varint());
          return true;
        }
        return false;
      });
      out.push_back(t);
      return true;
    });
    return true;
  });
  return out;
}

std::vector<FileTensor> GraphDefNodes(const std::string &bytes) {
  // GraphDef.node = 1; NodeDef.name = 1, .op = 2, .input = 3 (tensorflow/core/framework/{graph,node_def}.proto)
  std::vector<FileTensor> out;
  Whole(bytes).Fields([&](uint32_t field, uint32_t wire, Reader &graph) {
    if (field != 1 || wire != 2) {
      return false;
    }
    FileTensor t;
    graph.Bytes().Fields([&](uint32_t nfield, uint32_t nwire, Reader &node) {
      if (nwire == 2 && (nfield == 1 || nfield == 2)) {
        (nfield == 1 ? t.name : t.op) = AsString(node.Bytes());
        return true;
      }
      if (nwire == 2 && nfield == 3) {
        t.inputs.push_back(AsString(node.Bytes()));
        return true;
      }
      return false;
    });
    out.push_back(t);
    return true;
  });
  return out;
}

}  // namespace bundle_builder
