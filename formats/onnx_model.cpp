#include "formats/onnx_model.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <exception>
#include <limits>
#include <map>
#include <set>

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "formats/atomic_file.h"
#include "formats/error.h"

namespace linearize::onnx_model {

std::size_t element_size(ElementType type) {
  switch (type) {
    case ElementType::f32: return 4;
    case ElementType::i64: return 8;
    case ElementType::boolean: return 1;
    case ElementType::f16: return 2;
    case ElementType::f64: return 8;
    case ElementType::bf16: return 2;
  }
  return 0;
}

struct Graph::Impl {
  onnx::GraphProto proto;
  std::shared_ptr<std::int64_t> counter;
};

Graph::Graph(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Graph::~Graph() = default;

namespace {

void set_type(onnx::ValueInfoProto* info, ElementType type, const std::vector<Dim>& shape) {
  auto* tensor = info->mutable_type()->mutable_tensor_type();
  tensor->set_elem_type(static_cast<std::int32_t>(type));
  auto* dims = tensor->mutable_shape();
  for (const auto& d : shape) {
    auto* dim = dims->add_dim();
    if (d.name.empty()) dim->set_dim_value(d.size);
    else dim->set_dim_param(d.name);
  }
}

void set_attribute(onnx::AttributeProto* a, const Attribute& attribute) {
  a->set_name(attribute.name);
  std::visit(
      [a](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::int64_t>) {
          a->set_type(onnx::AttributeProto::INT);
          a->set_i(v);
        } else if constexpr (std::is_same_v<T, float>) {
          a->set_type(onnx::AttributeProto::FLOAT);
          a->set_f(v);
        } else if constexpr (std::is_same_v<T, std::string>) {
          a->set_type(onnx::AttributeProto::STRING);
          a->set_s(v);
        } else if constexpr (std::is_same_v<T, std::vector<std::int64_t>>) {
          a->set_type(onnx::AttributeProto::INTS);
          for (const auto x : v) a->add_ints(x);
        } else if constexpr (std::is_same_v<T, std::vector<float>>) {
          a->set_type(onnx::AttributeProto::FLOATS);
          for (const auto x : v) a->add_floats(x);
        } else {
          a->set_type(onnx::AttributeProto::GRAPH);
          *a->mutable_g() = v->proto();
        }
      },
      attribute.value);
}

}  // namespace

void Graph::input(const std::string& name, ElementType type, const std::vector<Dim>& shape) {
  auto* info = impl_->proto.add_input();
  info->set_name(name);
  set_type(info, type, shape);
}

void Graph::output(const std::string& name, ElementType type, const std::vector<Dim>& shape) {
  auto* info = impl_->proto.add_output();
  info->set_name(name);
  set_type(info, type, shape);
}

std::string Graph::fresh_name(const std::string& hint) const {
  return hint + "_" + std::to_string((*impl_->counter)++);
}

std::vector<std::string> Graph::node(const std::string& op, const std::vector<std::string>& inputs, int outputs,
                                     const std::vector<Attribute>& attributes) {
  auto* n = impl_->proto.add_node();
  n->set_op_type(op);
  n->set_name(fresh_name(op));
  for (const auto& in : inputs) n->add_input(in);
  std::vector<std::string> names;
  for (int i = 0; i < outputs; ++i) {
    names.push_back(fresh_name(op + "_out"));
    n->add_output(names.back());
  }
  for (const auto& attribute : attributes) set_attribute(n->add_attribute(), attribute);
  return names;
}

void Graph::rename(const std::string& value, const std::string& name) {
  auto* n = impl_->proto.add_node();
  n->set_op_type("Identity");
  n->set_name(fresh_name("Identity"));
  n->add_input(value);
  n->add_output(name);
}

std::shared_ptr<Graph> Graph::subgraph(const std::string& name) const {
  auto impl = std::make_unique<Impl>();
  impl->proto.set_name(name);
  impl->counter = impl_->counter;
  return std::shared_ptr<Graph>(new Graph(std::move(impl)));
}

std::size_t Graph::node_count() const { return static_cast<std::size_t>(impl_->proto.node_size()); }

const onnx::GraphProto& Graph::proto() const { return impl_->proto; }

// protobuf's output stream onto an AtomicFile.
// protobuf calls Write from its adaptor's destructor too, so a failure is kept and reported, never thrown there.
class AtomicFileStream final : public google::protobuf::io::CopyingOutputStream {
 public:
  explicit AtomicFileStream(AtomicFile& file) : file_(file) {}
  bool Write(const void* buffer, int size) override {
    if (error_) return false;
    try {
      file_.write(buffer, static_cast<std::size_t>(size));
      return true;
    } catch (...) {
      error_ = std::current_exception();
      return false;
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  AtomicFile& file_;
  std::exception_ptr error_;
};

struct PendingInitializer {
  std::string name;
  ElementType type;
  std::vector<std::int64_t> shape;
  const void* data;
  std::shared_ptr<const void> keep_alive;
  std::function<void()> written;
  std::uint64_t bytes() const {
    std::uint64_t n = element_size(type);
    for (const auto d : shape) n *= static_cast<std::uint64_t>(d);
    return n;
  }
};

struct Model::Impl {
  onnx::ModelProto proto;
  std::unique_ptr<Graph> graph;
  std::vector<PendingInitializer> initializers;
  std::set<std::string> names;
};

namespace {
// The oldest IR version that carries `opset` (onnx.helper.VERSION_TABLE): a graph stamped with the library's
// newest IR would be refused by runtimes that run its opset but predate that IR.
std::int64_t ir_version_for(std::int64_t opset) {
  static const std::map<std::int64_t, std::int64_t> table{{18, 8},  {19, 9},  {20, 9},  {21, 10}, {22, 10},
                                                          {23, 11}, {24, 12}, {25, 13}, {26, 13}, {27, 13}, {28, 14}};
  const auto it = table.find(opset);
  return it == table.end() ? static_cast<std::int64_t>(onnx::IR_VERSION) : it->second;
}
}  // namespace

Model::Model(std::int64_t opset, const std::string& producer_version) : impl_(std::make_unique<Impl>()) {
  auto& m = impl_->proto;
  m.set_ir_version(ir_version_for(opset));
  m.set_producer_name("linearize");
  m.set_producer_version(producer_version);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  auto graph = std::make_unique<Graph::Impl>();
  graph->proto.set_name("linearize");
  graph->counter = std::make_shared<std::int64_t>(0);
  impl_->graph.reset(new Graph(std::move(graph)));
}

Model::~Model() = default;

Graph& Model::graph() { return *impl_->graph; }

void Model::initializer(const std::string& name, ElementType type, const std::vector<std::int64_t>& shape,
                        const void* data, std::shared_ptr<const void> keep_alive, std::function<void()> written) {
  if (!impl_->names.insert(name).second) throw std::logic_error("onnx_model: initializer " + name + " added twice");
  impl_->initializers.push_back({name, type, shape, data, std::move(keep_alive), std::move(written)});
}

namespace {
template <class T>
std::string own_constant(Model& model, const std::string& name, const std::vector<T>& values,
                         const std::vector<std::int64_t>& shape, ElementType type) {
  auto copy = std::make_shared<std::vector<T>>(values);
  model.initializer(name, type, shape, copy->data(), copy);
  return name;
}
}  // namespace

std::string Model::constant(const std::string& name, const std::vector<float>& values, const std::vector<std::int64_t>& shape) {
  return own_constant(*this, name, values, shape, ElementType::f32);
}

std::string Model::constant(const std::string& name, const std::vector<std::int64_t>& values,
                            const std::vector<std::int64_t>& shape) {
  return own_constant(*this, name, values, shape, ElementType::i64);
}

bool Model::has_initializer(const std::string& name) const { return impl_->names.count(name) != 0; }

void Model::metadata(const std::string& key, const std::string& value) {
  auto* entry = impl_->proto.add_metadata_props();
  entry->set_key(key);
  entry->set_value(value);
}

SaveResult Model::save(const std::filesystem::path& path, const SaveOptions& options) const {
  SaveResult result;
  std::uint64_t total = 0;
  for (const auto& init : impl_->initializers) total += init.bytes();
  const bool external = total > options.external_data_above;
  // A copy of the proto without initializers, then filled: the caller's Model stays as built.
  onnx::ModelProto proto = impl_->proto;
  *proto.mutable_graph() = impl_->graph->proto();
  const auto data_path = std::filesystem::path(path.string() + ".data");
  std::unique_ptr<AtomicFile> data;
  if (external) data = std::make_unique<AtomicFile>(data_path);
  std::uint64_t offset = 0;
  static const std::string zeros(4096, '\0');
  for (const auto& init : impl_->initializers) {
    auto* t = proto.mutable_graph()->add_initializer();
    t->set_name(init.name);
    t->set_data_type(static_cast<std::int32_t>(init.type));
    for (const auto d : init.shape) t->add_dims(d);
    const auto bytes = init.bytes();
    if (!external || bytes < options.inline_below) {
      t->set_raw_data(init.data, bytes);
      if (init.written) init.written();
      continue;
    }
    const auto aligned = (offset + options.alignment - 1) / options.alignment * options.alignment;
    for (auto pad = aligned - offset; pad > 0;) {
      const auto n = std::min<std::uint64_t>(pad, zeros.size());
      data->write(zeros.data(), n);
      pad -= n;
    }
    offset = aligned;
    data->write(init.data, bytes);
    if (init.written) init.written();
    t->set_data_location(onnx::TensorProto::EXTERNAL);
    const auto add = [t](const std::string& key, const std::string& value) {
      auto* e = t->add_external_data();
      e->set_key(key);
      e->set_value(value);
    };
    add("location", data_path.filename().string());
    add("offset", std::to_string(offset));
    add("length", std::to_string(bytes));
    offset += bytes;
  }
  // Streamed into the file: an inline graph of 2 GiB is not held a second time as one string.
  const auto size = proto.ByteSizeLong();
  if (size > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    throw std::runtime_error(path.string() + ": the graph is over protobuf's 2 GiB limit; lower --external-data-above");
  AtomicFile graph_file(path);
  AtomicFileStream stream(graph_file);
  bool serialized = false;
  {
    google::protobuf::io::CopyingOutputStreamAdaptor adaptor(&stream);
    serialized = proto.SerializeToZeroCopyStream(&adaptor) && adaptor.Flush();
  }
  stream.rethrow();
  if (!serialized) throw std::runtime_error(path.string() + ": the graph does not serialize");
  if (data) data->commit();
  graph_file.commit();
  // An inline graph over an earlier external one: its data file would be a stray copy of old weights.
  if (!data) std::filesystem::remove(data_path);
  result.graph_bytes = size;
  result.external_data_bytes = external ? offset : 0;
  result.initializers = static_cast<std::int64_t>(impl_->initializers.size());
  if (external) result.external_data = data_path;
  return result;
}

namespace {

onnx::ModelProto parse(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string(), "file", "cannot be opened");
  onnx::ModelProto proto;
  if (!proto.ParseFromIstream(&in)) throw InputError(path.string(), "ModelProto", "is not a valid ONNX protobuf");
  return proto;
}

std::int64_t default_opset(const onnx::ModelProto& proto) {
  for (const auto& op : proto.opset_import())
    if (op.domain().empty() || op.domain() == "ai.onnx") return op.version();
  return 0;
}

}  // namespace

CheckResult check_file(const std::filesystem::path& path) {
  CheckResult result;
  auto proto = parse(path);
  result.opset = default_opset(proto);
  result.nodes = proto.graph().node_size();
  const bool external = std::any_of(proto.graph().initializer().begin(), proto.graph().initializer().end(),
                                    [](const auto& t) { return t.data_location() == onnx::TensorProto::EXTERNAL; });
  try {
    // With external data, the path form resolves each initializer's file next to the model and checks its
    // location and size; an inline graph is checked as parsed (not read a second time).
    if (external) onnx::checker::check_model(path.string(), /*full_check=*/true);
    else onnx::checker::check_model(proto, /*full_check=*/true);
  } catch (const std::exception& e) {
    result.checker = e.what();
  }
  try {
    // Strict: a node whose output type or shape cannot be inferred, or contradicts a declared one, throws.
    onnx::ShapeInferenceOptions options(/*check_type=*/true, /*error_mode=*/1, /*data_prop=*/true);
    onnx::shape_inference::InferShapes(proto, onnx::OpSchemaRegistry::Instance(), options);
  } catch (const std::exception& e) {
    result.shape_inference = e.what();
  }
  return result;
}

FileInfo read_file_info(const std::filesystem::path& path) {
  const auto proto = parse(path);
  FileInfo info;
  info.opset = default_opset(proto);
  for (const auto& t : proto.graph().initializer()) {
    InitializerInfo i;
    i.name = t.name();
    i.type = static_cast<ElementType>(t.data_type());
    i.shape.assign(t.dims().begin(), t.dims().end());
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      for (const auto& e : t.external_data()) {
        const auto number = [&] {
          std::size_t used = 0;
          try {
            const auto n = std::stoull(e.value(), &used);
            if (used == e.value().size()) return n;
          } catch (const std::exception&) {
          }
          throw InputError(path.string(), t.name() + ".external_data." + e.key(), "is not a byte count: " + e.value());
        };
        if (e.key() == "location") i.location = e.value();
        else if (e.key() == "offset") i.offset = number();
        else if (e.key() == "length") i.length = number();
      }
    } else {
      i.inline_bytes = t.raw_data();
      i.length = i.inline_bytes.size();
    }
    info.initializers.push_back(std::move(i));
  }
  for (const auto& v : proto.graph().input()) info.inputs.push_back(v.name());
  for (const auto& v : proto.graph().output()) info.outputs.push_back(v.name());
  for (const auto& m : proto.metadata_props()) info.metadata.emplace_back(m.key(), m.value());
  return info;
}

}  // namespace linearize::onnx_model
